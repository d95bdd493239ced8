#!/usr/bin/env bash
# The local stack's certificates under .run/tls, made with Java's keytool: a CA of
# its own, a server certificate for 127.0.0.1, ::1 and localhost (Kafka's TLS
# listeners, PostgreSQL's TLS) and a client certificate (Kafka's mutual-TLS
# listener). Development only: the keys are not protected beyond file modes.
#   tls.sh ensure   make them when missing or within 30 days of expiring
#   tls.sh paths    print where each file is
# The same files in two forms: PKCS#12 key stores for Kafka (Java), PEM for
# PostgreSQL and the Python clients (the keys converted with the venv's
# cryptography package, since keytool cannot export a private key).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TLS="$RUN/tls"
PASS=erc8004-dev-tls
DAYS=825

ks() { keytool -storetype PKCS12 -storepass "$PASS" "$@"; }

# issue NAME CN EXT...: a key pair in NAME.p12, its certificate signed by the CA
# (with the CA in its chain), and NAME.pem / NAME-key.pem beside it.
issue() {
  local name=$1 cn=$2; shift 2
  rm -f "$TLS/$name.p12"
  ks -genkeypair -keystore "$TLS/$name.p12" -alias "$name" -keyalg RSA -keysize 2048 \
    -dname "CN=$cn,O=erc8004-backend local" -validity "$DAYS" >/dev/null 2>&1
  ks -certreq -keystore "$TLS/$name.p12" -alias "$name" \
    | ks -gencert -keystore "$TLS/ca.p12" -alias ca -rfc -validity "$DAYS" "$@" >"$TLS/$name.crt"
  ks -importcert -keystore "$TLS/$name.p12" -alias ca -file "$TLS/ca.pem" -noprompt >/dev/null 2>&1
  ks -importcert -keystore "$TLS/$name.p12" -alias "$name" -file "$TLS/$name.crt" >/dev/null 2>&1
  "$PY" - "$TLS/$name.p12" "$PASS" "$TLS/$name" <<'PY'
import sys
from pathlib import Path
from cryptography.hazmat.primitives.serialization import (
    Encoding, NoEncryption, PrivateFormat, pkcs12)

store, password, out = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
key, cert, _chain = pkcs12.load_key_and_certificates(Path(store).read_bytes(), password)
key_path = Path(f"{out}-key.pem")
key_path.touch(mode=0o600)
key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
Path(f"{out}.pem").write_bytes(cert.public_bytes(Encoding.PEM))
PY
  rm -f "$TLS/$name.crt"
}

fresh() {
  [ -f "$TLS/ca.pem" ] && [ -f "$TLS/server.p12" ] && [ -f "$TLS/client-key.pem" ] \
    && [ -f "$TLS/truststore.p12" ] && [ -f "$TLS/server-key.pem" ] || return 1
  "$PY" - "$TLS/server.pem" <<'PY'
import sys, datetime
from pathlib import Path
from cryptography import x509
cert = x509.load_pem_x509_certificate(Path(sys.argv[1]).read_bytes())
left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
sys.exit(0 if left > datetime.timedelta(days=30) else 1)
PY
}

ensure() {
  command -v keytool >/dev/null || apt_install openjdk-17-jre-headless
  if fresh; then return 0; fi
  log "making the local CA and certificates with keytool in $TLS"
  rm -rf "$TLS"; mkdir -p "$TLS"; chmod 700 "$TLS"
  ks -genkeypair -keystore "$TLS/ca.p12" -alias ca -keyalg RSA -keysize 2048 \
    -dname "CN=erc8004-backend local CA" -ext bc:c -validity 3650 >/dev/null 2>&1
  ks -exportcert -keystore "$TLS/ca.p12" -alias ca -rfc >"$TLS/ca.pem" 2>/dev/null
  ks -importcert -keystore "$TLS/truststore.p12" -alias ca -file "$TLS/ca.pem" -noprompt >/dev/null 2>&1
  issue server localhost -ext "san=ip:127.0.0.1,ip:::1,dns:localhost" \
    -ext "eku=serverAuth" -ext "ku:c=digitalSignature,keyEncipherment"
  issue client erc8004-client -ext "eku=clientAuth" -ext "ku:c=digitalSignature,keyEncipherment"
  # The CA certificate and the stores are read by others (PostgreSQL's OS user).
  # The key stores hold private keys (their password is no secret): owner only.
  chmod 755 "$TLS"; chmod 644 "$TLS/ca.pem" "$TLS/truststore.p12" "$TLS/server.pem" "$TLS/client.pem"
  chmod 600 "$TLS"/*-key.pem "$TLS/ca.p12" "$TLS/server.p12" "$TLS/client.p12"
}

paths() {
  cat <<EOF
ca           $TLS/ca.pem
server       $TLS/server.pem $TLS/server-key.pem ($TLS/server.p12, password $PASS)
client       $TLS/client.pem $TLS/client-key.pem
truststore   $TLS/truststore.p12 (password $PASS)
EOF
}

case "${1:-ensure}" in
  ensure) ensure ;;
  paths) paths ;;
  *) die "usage: $0 ensure|paths" ;;
esac
