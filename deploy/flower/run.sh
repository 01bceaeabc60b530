#!/usr/bin/env bash
# Submit the KFAAR Flower app to a running SuperLink (the coordinator's ServerApp host).
# Usage: run.sh CONNECTION [RUN_CONFIG.toml]
#   CONNECTION is a [superlink.<name>] section of $FLWR_HOME/config.toml (see config.toml).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
app=$(cd "$here/../../training/federated" && pwd)
conn=${1:?usage: run.sh CONNECTION [RUN_CONFIG.toml]}
args=(run "$app" "$conn" --stream)
if [[ $# -ge 2 ]]; then args+=(--run-config "$2"); fi
exec flwr "${args[@]}"
