#!/usr/bin/env bash
# Make a development CA, a server certificate for localhost/127.0.0.1 (plus any extra DNS
# names, such as a compose service or a Kubernetes Service) and one client certificate,
# for trying TLS and mTLS. Production keys come from your PKI.
# Usage: deploy/tls/make-dev-certs.sh OUTDIR [CLIENT_NAME [SERVER_DNS_NAME...]]
set -euo pipefail
out=${1:?usage: make-dev-certs.sh OUTDIR [CLIENT_NAME [SERVER_DNS_NAME...]]}
client=${2:-edge-device}
san="DNS:localhost,IP:127.0.0.1"
for name in "${@:3}"; do san="$san,DNS:$name"; done
mkdir -p "$out"
cd "$out"
umask 077
days=30
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $days \
  -keyout ca.key -out ca.crt -subj "/CN=kfaar dev CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf "subjectAltName=%s\n" "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
  -extfile server.ext -out server.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout client.key -out client.csr -subj "/CN=$client" 2>/dev/null
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days $days \
  -out client.crt 2>/dev/null
rm -f ./*.csr ./*.ext ./*.srl
echo "$out: ca.crt server.crt server.key client.crt client.key"
