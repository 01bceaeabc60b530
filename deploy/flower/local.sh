#!/usr/bin/env bash
# The whole loopback federation in one command: partition, SuperLink, N SuperNodes,
# flwr run, cleanup, export. A thin wrapper over `kfaar fl local`.
# Usage: local.sh OUT_DIR [SITES [ROUNDS [extra kfaar fl local flags...]]]
set -euo pipefail
out=${1:?usage: local.sh OUT_DIR [SITES [ROUNDS [flags...]]]}
exec kfaar -v fl local --out "$out" --sites "${2:-3}" --rounds "${3:-3}" "${@:4}"
