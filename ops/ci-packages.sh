#!/usr/bin/env bash
# Debian packages the test suite drives for real: Chromium and its WebDriver (Flower's UI
# test), redis-server (tests start Redis servers of their own), systemd (systemd-analyze
# verifies the units), rabbitmq-server (the RabbitMQ tests: a vhost per test on the shared
# node, private nodes for restarts), postgresql (initdb/pg_ctl for a private cluster), bwa samtools bcftools (the workflow
# example: ops/workflow-example.sh), sudo (a worker starting jobs as their real user),
# openssh-server rsync (staging tests: an sshd of the test's own, rsync over it). Idempotent.
set -euo pipefail
need=()
for pkg in chromium chromium-driver redis-server systemd rabbitmq-server postgresql bwa samtools bcftools sudo openssh-server rsync; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  timeout 600 apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${need[@]}" >/dev/null
fi
echo "Debian packages present: chromium chromium-driver redis-server systemd rabbitmq-server postgresql bwa samtools" \
  "bcftools sudo openssh-server rsync"
