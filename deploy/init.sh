#!/usr/bin/env bash
# Create what docker-compose.yml mounts and does not ship: the cloud's bearer token, the edge API
# key (compose secrets) and a TLS certificate for the cloud, signed by a local CA the edge trusts.
# Existing files are kept, so re-running is safe.   Usage: deploy/init.sh [extra DNS name ...]
# RELAY_DEPLOY_DIR=DIR writes DIR/secrets and DIR/certs instead of deploy/ (the compose test does).
set -euo pipefail
cd "${RELAY_DEPLOY_DIR:-$(dirname "$0")}"
umask 077
mkdir -p secrets certs
for name in relay_token edge_api_key; do
  [ -s "secrets/$name" ] || { openssl rand -hex 24 > "secrets/$name"; echo "created deploy/secrets/$name"; }
done
if [ ! -s certs/server.pem ]; then
  sans="DNS:cloud,DNS:localhost,IP:127.0.0.1"
  for extra in "$@"; do sans="$sans,DNS:$extra"; done
  openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=RelayLLM local CA" \
    -keyout certs/ca.key -out certs/ca.pem 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=cloud" -keyout certs/server.key -out certs/server.csr 2>/dev/null
  openssl x509 -req -in certs/server.csr -CA certs/ca.pem -CAkey certs/ca.key -CAcreateserial -days 825 \
    -extfile <(printf "subjectAltName=%s\nextendedKeyUsage=serverAuth\n" "$sans") -out certs/server.pem 2>/dev/null
  rm -f certs/server.csr certs/ca.srl
  echo "created deploy/certs/{ca.pem,server.pem,server.key} for $sans"
fi
# The containers run as root here; readable files keep rootless Docker and podman working too.
chmod 644 secrets/* certs/ca.pem certs/server.pem certs/server.key
