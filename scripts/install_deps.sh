#!/usr/bin/env bash
# install_deps.sh — installs, with apt, whatever hybridmoe needs that this machine lacks.
# Checks each package first, so a machine that has them all touches nothing.
# Usage: scripts/install_deps.sh [--python]   (--python adds what the Python bindings need)
set -euo pipefail

packages=(
  cmake g++ ninja-build ccache
  libtorch-dev libgloo-dev
  libopenblas0-pthread   # without it Debian's libtorch falls back to reference BLAS (~20x slower)
  libcli11-dev nlohmann-json3-dev libtomlplusplus-dev libfmt-dev
  libgtest-dev
  clang-format           # make format-check
  iproute2 nftables      # tests/netns: namespaces as nodes (ip, tc) and the lossy-link fault (nft)
)
if [[ "${1:-}" == "--python" ]]; then
  packages+=(python3-torch python3-dev pybind11-dev python3-pytest)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

echo "install_deps: installing ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "install_deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
