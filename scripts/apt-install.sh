#!/usr/bin/env bash
# Installs Debian packages (`apt-install.sh pkg...`): as root, or through sudo; refreshes the
# package lists only when a package cannot be found without it.
set -euo pipefail
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "apt-install: need root or sudo to install: $*" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing (apt-get): $*" >&2
$sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
  || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
