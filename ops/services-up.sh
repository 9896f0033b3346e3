#!/usr/bin/env bash
# Start the local PostgreSQL, Redis and RabbitMQ this project's tests use, if they are not
# running (each is started the way this machine's image starts it). Idempotent.
set -euo pipefail

up() { timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

if ! up 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
if ! up 6379; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! up 5672 && command -v rabbitmq-server >/dev/null; then
  rabbitmq-server -detached
fi
for port in 5432 6379 5672; do
  for _ in $(seq 60); do up $port && break; sleep 1; done
  up $port || { echo "service on port $port did not come up" >&2; exit 1; }
done
echo "services up: PostgreSQL :5432, Redis :6379, RabbitMQ :5672"
