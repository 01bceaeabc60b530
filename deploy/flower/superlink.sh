#!/usr/bin/env bash
# Start the federation's SuperLink (run by the coordinating organization).
# Usage: superlink.sh [insecure|tls]     Env: HOST (127.0.0.1), PORT (9093), TLS_DIR (./tls),
#        FLWR_HOME (./flwr-home): the state database and logs live there.
set -euo pipefail
mode=${1:-insecure}
host=${HOST:-127.0.0.1}
port=${PORT:-9093}
home=${FLWR_HOME:-$PWD/flwr-home}
mkdir -p "$home"
args=(--host "$host" --port "$port" --database "$home/state.db"
      --disable-runtime-dependency-installation)  # sites run the installed kfaar, never pip
case $mode in
  insecure) args+=(--insecure) ;;
  tls)
    tls=${TLS_DIR:-$PWD/tls}
    # TLS for Fleet, Control and Runtime APIs, and only registered SuperNode keys may join.
    args+=(--ssl-ca-certfile "$tls/ca.crt" --ssl-certfile "$tls/server.crt"
           --ssl-keyfile "$tls/server.key" --enable-supernode-auth) ;;
  *) echo "usage: $0 [insecure|tls]" >&2; exit 2 ;;
esac
exec flower-superlink "${args[@]}"
