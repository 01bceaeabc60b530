#!/usr/bin/env bash
# Make a site's SuperNode authentication key pair: OpenSSH-format EC (P-384) keys.
# The site keeps NAME (private); the coordinator registers NAME.pub with
#   flwr supernode register NAME.pub <connection>
# Usage: node-key.sh OUT_DIR [NAME]
set -euo pipefail
out=${1:?usage: node-key.sh OUT_DIR [NAME]}
name=${2:-node.key}
mkdir -p "$out"
ssh-keygen -q -t ecdsa -b 384 -N "" -C "kfaar-supernode" -f "$out/$name"
echo "$out/$name (keep at the site) and $out/$name.pub (register at the SuperLink)"
