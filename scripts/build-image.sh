#!/usr/bin/env bash
# `make image`: build the Dockerfile with podman (or buildah), as Debian packages them.
#   IMAGE=incident-runbooks:dev scripts/build-image.sh
# The Dockerfile starts FROM python:3.11-slim-bookworm. Where no container registry can be
# reached (a machine that reaches only package mirrors), the same base is made from Debian's
# packages with mmdebstrap (bookworm's python3 is 3.11) and used instead: BASE=... overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-incident-runbooks:dev}
BASE=${BASE:-}
LOCAL_BASE=localhost/incident-runbooks-base:bookworm
say() { printf '[image] %s\n' "$*"; }

if ! command -v podman >/dev/null 2>&1 && ! command -v buildah >/dev/null 2>&1; then
  bash scripts/debian-packages.sh image
fi
if command -v podman >/dev/null 2>&1; then tool=podman; else tool=buildah; fi
# vfs storage and chroot isolation: no overlay mounts or cgroup set-up needed (they also work
# inside a container or a restricted VM); a normal host may use its own storage.conf instead.
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
store=(--storage-driver "$STORAGE_DRIVER")

if [ -z "$BASE" ]; then
  if $tool "${store[@]}" pull --quiet docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
    BASE=docker.io/library/python:3.11-slim-bookworm
  else
    BASE=$LOCAL_BASE
    if ! $tool "${store[@]}" image exists "$BASE" 2>/dev/null && ! $tool "${store[@]}" inspect "$BASE" >/dev/null 2>&1; then
      say "no registry reachable for python:3.11-slim-bookworm: making $BASE from Debian packages (mmdebstrap)"
      command -v mmdebstrap >/dev/null 2>&1 || bash scripts/debian-packages.sh image
      rootfs=$(mktemp --suffix=.tar)
      trap 'rm -f "$rootfs"' EXIT
      mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
        --aptopt='Apt::Install-Recommends "false"' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
        bookworm "$rootfs" http://deb.debian.org/debian
      $tool "${store[@]}" import --change 'CMD ["python3"]' "$rootfs" "$BASE" >/dev/null
    fi
  fi
fi

# pip inside the build trusts what pip here trusts (a TLS-inspecting proxy's CA, say)
build=(--isolation "$BUILDAH_ISOLATION" --build-arg "BASE=$BASE" --tag "$IMAGE")
ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
[ -n "$ca" ] && [ -s "$ca" ] && build+=(--secret "id=ca,src=$ca")
say "building $IMAGE from $BASE with $tool"
start=$(date +%s)
if [ "$tool" = podman ]; then
  podman "${store[@]}" build "${build[@]}" .
else
  buildah "${store[@]}" bud "${build[@]}" .
fi
size=$($tool "${store[@]}" image inspect --format '{{.Size}}' "$IMAGE")
say "$IMAGE built in $(( $(date +%s) - start )) s, $(( size / 1024 / 1024 )) MiB"
