#!/usr/bin/env bash
# The compose deployment on podman, for hosts with no Docker engine and no container registry
# (like this project's CI machines; docs/DEPLOY.md). Docker users need none of this.
#   deploy/podman.sh setup          install podman, runc, debootstrap (apt) and podman-compose (pip)
#   deploy/podman.sh base           Debian bookworm base image built locally -> relayllm-base:bookworm
#   deploy/podman.sh build          relayllm:latest on that base (built first if missing), with this
#                                   host's pip CA and mirrors
#   deploy/podman.sh compose ARGS   podman-compose with the repo's docker-compose.yml
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CONTAINERS_CONF="$ROOT/deploy/containers.conf"
BASE_TAG="${RELAY_BASE_IMAGE:-relayllm-base:bookworm}"
IMAGE="${RELAY_IMAGE:-relayllm:latest}"
COMPOSE="${PODMAN_COMPOSE:-$ROOT/.venv/bin/podman-compose}"

setup() {
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
  fi
  [ -x "$COMPOSE" ] || "$ROOT/.venv/bin/pip" install -q "podman-compose==1.6.0"
}

base() {
  if podman image exists "$BASE_TAG"; then echo "$BASE_TAG exists"; return; fi
  local rootfs
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs"' RETURN
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
    http://deb.debian.org/debian >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_TAG" >/dev/null
  echo "built $BASE_TAG"
}

build() {
  podman image exists "$BASE_TAG" || base
  # The host's pip settings reach the build as mounts: its CA bundle (registries are reached through
  # an interception proxy here), the local CPU torch wheel and PyPI mirrors on disk.
  local cert find_links pip mounts=() args=()
  pip="$(command -v pip || echo "$ROOT/.venv/bin/pip")"
  cert="${PIP_CERT:-$("$pip" config list 2>/dev/null | sed -n "s/^[a-z:]*\.cert='\(.*\)'$/\1/p" | head -1)}"
  # The host's trust store holds the CA that registries are reached through here; the image's
  # pip (certifi) does not.
  [ -z "$cert" ] && [ -f /etc/ssl/certs/ca-certificates.crt ] && cert=/etc/ssl/certs/ca-certificates.crt
  [ -n "$cert" ] && mounts+=(-v "$cert:/host-ca.crt:ro") && args+=(--build-arg PIP_CERT=/host-ca.crt)
  find_links="${PIP_FIND_LINKS:-$("$pip" config list 2>/dev/null | sed -n "s/^[a-z:]*\.find-links='\(.*\)'$/\1/p" | head -1)}"
  [ -n "$find_links" ] && mounts+=(-v "$find_links:$find_links:ro") && args+=(--build-arg "PIP_FIND_LINKS=$find_links")
  # A local CPU torch wheel (as on this project's machines) beats the public CPU index; without
  # one the Dockerfile's default (download.pytorch.org/whl/cpu) stays.
  if [ -n "$find_links" ] && compgen -G "$find_links/torch-*+cpu-*.whl" >/dev/null; then
    args+=(--build-arg TORCH_INDEX_URL=https://pypi.org/simple)
  fi
  local extra=()
  for dir in /opt/pypi /opt/pypi-more; do
    [ -d "$dir/simple" ] && mounts+=(-v "$dir:$dir:ro") && extra+=("file://$dir/simple")
  done
  [ ${#extra[@]} -gt 0 ] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra[*]}")
  podman build --network host "${mounts[@]}" "${args[@]}" --build-arg "BASE_IMAGE=$BASE_TAG" \
    -t "$IMAGE" "$ROOT" "$@"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  setup) setup ;;
  base) base ;;
  build) build "$@" ;;
  compose) cd "$ROOT" && exec "$COMPOSE" "$@" ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
