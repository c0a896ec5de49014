#!/usr/bin/env bash
# Makes the throwaway PKI the TLS tests use (Rust integration tests and the interop suites),
# with the openssl CLI, into DIR:
#   ca.pem                      the CA clients and the server trust
#   server.pem / server.key     server certificate for localhost and 127.0.0.1 (by ca)
#   server2.pem / server2.key   another one, for the reload test (by ca)
#   client.pem / client.key     client certificate, CN=guest (by ca)
#   stranger.pem / stranger.key client certificate, CN=nobody (by ca; no such user)
#   rogue.pem / rogue.key       client certificate, CN=guest, by another CA (refused)
# EC P-256 keys (fast), valid two days. Usage: make-certs.sh DIR
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
q() { openssl "$@" 2>/dev/null; }
newkey() { q genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
ca() { # name subject
  newkey "$1.key"
  q req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() { # name cn ca extensions
  newkey "$1.key"
  q req -new -key "$1.key" -out "$1.csr" -subj "/O=FerryMQ tests/CN=$2"
  printf '%b' "$4" >"$1.ext"
  q x509 -req -in "$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial -out "$1.pem" -days 2 \
    -extfile "$1.ext"
  rm -f "$1.csr" "$1.ext"
}
server_ext='basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n'
client_ext='basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n'
ca ca "FerryMQ test CA"
ca other-ca "Some other CA"
leaf server localhost ca "$server_ext"
leaf server2 localhost ca "$server_ext"
leaf client guest ca "$client_ext"
leaf stranger nobody ca "$client_ext"
leaf rogue guest other-ca "$client_ext"
rm -f ./*.srl
