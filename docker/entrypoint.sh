#!/bin/sh
# The image's entrypoint: which part of the runbooks this container is.
set -eu
what=${1:-intake}
[ $# -gt 0 ] && shift
case "$what" in
  intake)   exec python -m deployments.intake "$@" ;;
  worker)   exec prefect worker start --pool "${RUNBOOKS_WORK_POOL:-incident-response}" --type runbooks-warm \
                 --name "${RUNBOOKS_WORKER_NAME:-$(hostname)}" "$@" ;;
  watch)    exec python -c 'import sys; from flows.incident_watch import incident_watch
env = sys.argv[sys.argv.index("--environment") + 1] if "--environment" in sys.argv else "production"
print(incident_watch(environment=env))' "$@" ;;
  runbooks) exec runbooks "$@" ;;
  *)        exec "$what" "$@" ;;
esac
