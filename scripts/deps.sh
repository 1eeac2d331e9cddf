#!/usr/bin/env bash
# Installs the Debian packages nesf needs, only those missing.
#   scripts/deps.sh build   - compiler, meson, libraries
#   scripts/deps.sh test    - build + what the test suite uses (pymatgen, curl, clang, ...)
set -euo pipefail
build_pkgs=(build-essential meson ninja-build pkg-config libopenblas-dev libjansson-dev
            libmicrohttpd-dev uuid-dev libcmocka-dev libsymspg-dev curl)
test_pkgs=(python3-numpy python3-pymatgen python3-ase clang libclang-rt-14-dev jq librsvg2-bin python3-pil
           chromium nginx docker-compose python3-yaml python3-jsonschema systemd
           buildah debootstrap)
pkgs=("${build_pkgs[@]}")
[ "${1:-build}" = test ] && pkgs+=("${test_pkgs[@]}")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
# the browser test (tests/web) runs on Node.js >= 20: the machine image's, or Debian's
[ "${1:-build}" = test ] && ! command -v npm >/dev/null && missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# npm packages of the browser test (playwright-core), again only when the lock file changed
if [ "${1:-build}" = test ]; then
  web="$(dirname "$0")/../tests/web"
  if ! cmp -s "$web/package-lock.json" "$web/node_modules/.nesf-lock"; then
    echo "deps: npm ci in tests/web" >&2
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.nesf-lock)
  fi
fi
