#!/usr/bin/env bash
# scripts/deps.sh -- installs from Debian's packages what building, running
# and testing moonq needs, and only what is missing. Safe to run again.
set -euo pipefail

pkgs=(build-essential cmake pkg-config libpq-dev liblua5.4-dev lua5.4
      lua-cjson libev-dev libmicrohttpd-dev lua-busted postgresql postgresql-contrib
      curl prometheus chromium nodejs)
# The dashboard's browser test installs puppeteer-core with npm: Debian's
# nodejs needs the npm package beside it; other builds of nodejs bring it.
command -v npm >/dev/null || pkgs+=(npm)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
