#!/usr/bin/env bash
# The Debian packages the project runs beside Python, installed when missing. One script for
# `make test`, `make up` and .ci/run, so that the README's two commands are all the set-up.
#   scripts/debian-packages.sh test   kubectl, Prometheus, Alertmanager, HAProxy, Chromium, redis-server
#   scripts/debian-packages.sh up     kubectl, Prometheus, Alertmanager, HAProxy and redis-server (the stack's own;
#                                     HAProxy and redis-server for `make up HA=1`)
#   scripts/debian-packages.sh image  podman, runc and mmdebstrap (`make image`, and running the image)
# Without root or apt-get it installs nothing and prints the one command to run instead.
set -euo pipefail

want=(kubectl:kubernetes-client prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager
      haproxy:haproxy redis-server:redis-server)
if [ "${1:-test}" = image ]; then
  want=(podman:podman mmdebstrap:mmdebstrap runc:runc)
fi
if [ "${1:-test}" = test ]; then
  want+=(chromium:chromium)
fi

missing=()
for pair in "${want[@]}"; do
  binary=${pair%%:*} package=${pair#*:}
  command -v "$binary" >/dev/null 2>&1 || [ -x "/usr/bin/$binary" ] || [ -x "/usr/sbin/$binary" ] || missing+=("$package")
done
((${#missing[@]})) || exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing Debian packages: ${missing[*]}; install them with:" \
       "sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "Installing Debian packages (first run only): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
