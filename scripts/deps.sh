#!/usr/bin/env bash
# Installs the Debian packages nesf needs, only those missing.
#   scripts/deps.sh build   - compiler, meson, libraries
#   scripts/deps.sh test    - build + what the test suite uses (pymatgen, curl, clang, ...)
set -euo pipefail
build_pkgs=(build-essential meson ninja-build pkg-config libopenblas-dev libjansson-dev
            libmicrohttpd-dev uuid-dev libcmocka-dev libsymspg-dev curl)
test_pkgs=(python3-numpy python3-pymatgen python3-ase clang libclang-rt-14-dev jq)
pkgs=("${build_pkgs[@]}")
[ "${1:-build}" = test ] && pkgs+=("${test_pkgs[@]}")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
