#!/usr/bin/env bash
# Make the key and certificate galaxy-tasks signs its messages with, and the directory of
# trusted certificates every process checks signatures against (docs/security.md):
#
#     ops/signing-keys.sh /etc/galaxy-tasks/signing      # systemd (the units' default paths)
#     ops/signing-keys.sh ./signing                      # docker compose (SIGNING_DIR=./signing)
#
# Writes key.pem (0600), cert.pem and trusted/cert.pem; leaves existing files alone. Every
# process that sends or takes messages (workers, beat, Flower, clients such as Galaxy's
# plugin) needs all three; give Galaxy's plugin the same ones, or add its certificate to
# trusted/ of every worker.
set -euo pipefail
dir=${1:?usage: ops/signing-keys.sh <directory>}
mkdir -p "$dir/trusted"
chmod 0700 "$dir"
if [ ! -e "$dir/key.pem" ]; then
  (umask 077 && openssl req -x509 -newkey rsa:3072 -sha256 -days 3650 -nodes -subj "/CN=galaxy-tasks" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null)
fi
cp -n "$dir/cert.pem" "$dir/trusted/cert.pem"
echo "signing key and certificates in $dir: GALAXY_TASKS_SIGNING_KEY=$dir/key.pem" \
     "GALAXY_TASKS_SIGNING_CERT=$dir/cert.pem GALAXY_TASKS_SIGNING_CERT_STORE=$dir/trusted"
