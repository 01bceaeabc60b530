#!/usr/bin/env bash
# Start one site's SuperNode on its own data (run by each participating organization).
# Usage: supernode.sh SITE_DATA_DIR [insecure|tls]
# Env: SUPERLINK (127.0.0.1:9093), PORT (ClientAppIo port, 9094), TLS_DIR (./tls: ca.crt),
#      NODE_KEY (./tls/node.key: this site's OpenSSH EC private key, tls mode only).
set -euo pipefail
data=${1:?usage: supernode.sh SITE_DATA_DIR [insecure|tls]}
mode=${2:-insecure}
data=$(cd "$data" && pwd)
args=(--superlink "${SUPERLINK:-127.0.0.1:9093}" --port "${PORT:-9094}"
      --node-config "data-path=\"$data\"")
case $mode in
  insecure) args+=(--insecure) ;;
  tls)
    tls=${TLS_DIR:-$PWD/tls}
    args+=(--root-certificates "$tls/ca.crt"
           --auth-supernode-private-key "${NODE_KEY:-$tls/node.key}") ;;
  *) echo "usage: $0 SITE_DATA_DIR [insecure|tls]" >&2; exit 2 ;;
esac
exec flower-supernode "${args[@]}"
