# syntax=docker/dockerfile:1
# One image for the alert intake, the warm worker and the CLI (docker/entrypoint.sh picks which):
#   docker run IMAGE intake --host 0.0.0.0 --port 8787
#   docker run IMAGE worker                 (prefect worker start --type runbooks-warm)
#   docker run IMAGE watch --environment production   (one incident-watch sweep, for a CronJob)
#   docker run IMAGE runbooks incidents     (the CLI)
# `make image` builds it (podman or buildah). Dependencies are pinned by constraints.txt, so a
# rebuild installs the same versions; `make constraints` refreshes it from the tested venv.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# the build stage alone has pip's build tooling; the final stage has no compiler and no pip cache
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
RUN python3 -m venv /opt/venv
COPY constraints.txt pyproject.toml README.md ./
# dependencies first (a layer that survives source edits): the project's own list, pinned
# (behind a TLS-inspecting proxy, pass its CA bundle as the build secret `ca`: make image does)
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && /opt/venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/deps.txt \
 && /opt/venv/bin/pip install --constraint constraints.txt --requirement /tmp/deps.txt "setuptools>=68" wheel
COPY flows ./flows
COPY tasks ./tasks
COPY incidents ./incidents
COPY integrations ./integrations
COPY deployments ./deployments
COPY deploy/kubernetes/overlays/production/runbooks.yaml ./config/example-production.yaml
COPY config/sandbox.yaml prefect.yaml ./config-sandbox/
COPY docker/entrypoint.sh /usr/local/bin/runbooks-entrypoint
# the project itself (the `runbooks` command, the runbooks-warm worker type), editable so that
# Prefect's entrypoints (flows/<file>.py) and the imported modules are the same files; then the
# bytecode, as the root filesystem is read-only at run time (a few dependencies ship files for
# newer Pythons only, which do not compile and are never imported here)
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --editable . \
 && /opt/venv/bin/python -m compileall -q /app \
 && (/opt/venv/bin/python -m compileall -q /opt/venv/lib > /dev/null || true) \
 && mv config-sandbox/prefect.yaml . && mv config-sandbox/sandbox.yaml config/ && rmdir config-sandbox

FROM ${BASE}
LABEL org.opencontainers.image.title="incident-runbooks" \
      org.opencontainers.image.description="An SRE incident-response playbook as Prefect 3 workflows"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PREFECT_HOME=/home/runbooks/.prefect RUNBOOKS_CONFIG=/etc/runbooks/config.yaml
RUN groupadd --system --gid 10001 runbooks \
 && useradd --system --uid 10001 --gid runbooks --home-dir /home/runbooks --create-home runbooks
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --from=build /usr/local/bin/runbooks-entrypoint /usr/local/bin/runbooks-entrypoint
WORKDIR /app
USER 10001:10001
EXPOSE 8787
ENTRYPOINT ["runbooks-entrypoint"]
CMD ["intake", "--host", "0.0.0.0", "--port", "8787"]
