#!/usr/bin/env bash
# Installs the Debian packages the local edge stack needs (sshd, registry, buildah, mmdebstrap, htpasswd,
# docker-compose to validate docker-compose.yaml, wrk for the scoring-server benchmark, chromium for the headless
# browser tests, tcpdump and iptables for the two-host test) when they are missing. Installs only as root; otherwise
# prints the command to run.
set -euo pipefail

declare -A need=(
  [/usr/sbin/sshd]=openssh-server
  [/usr/bin/ssh-keygen]=openssh-client
  [/usr/bin/docker-registry]=docker-registry
  [/usr/bin/buildah]=buildah
  [/usr/bin/mmdebstrap]=mmdebstrap
  [/usr/bin/htpasswd]=apache2-utils
  [/usr/bin/docker-compose]=docker-compose
  [/usr/bin/wrk]=wrk
  [/usr/bin/chromium]=chromium
  [/usr/bin/tcpdump]=tcpdump
  [/usr/sbin/iptables]=iptables
)
missing=()
for path in "${!need[@]}"; do
  [ -x "$path" ] || missing+=("${need[$path]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "Missing system packages: ${missing[*]}" >&2
  echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q "${missing[@]}"
