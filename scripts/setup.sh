#!/usr/bin/env bash
# Installs what Troupe needs on a fresh Debian/Ubuntu machine, and nothing that is already there:
# npm dependencies (the native TensorFlow.js backends are optional and skipped when their
# download fails), nats-server and chromium from Debian's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

need_node="20.19.0"
have_node="$(node -p 'process.versions.node' 2>/dev/null || echo 0)"
if [ "$(printf '%s\n%s\n' "$need_node" "$have_node" | sort -V | head -n1)" != "$need_node" ]; then
  echo "setup: Node.js >= $need_node is required, found $have_node" >&2
  exit 1
fi

# npm dependencies: reinstall when node_modules is missing or older than the lockfile.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi

# nats-server: from PATH, or Debian's package.
find_nats() {
  command -v nats-server 2>/dev/null && return 0
  for d in /usr/sbin /usr/bin /usr/local/bin; do [ -x "$d/nats-server" ] && { echo "$d/nats-server"; return 0; }; done
  return 1
}
if ! find_nats >/dev/null; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing nats-server (Debian package nats-server)"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nats-server >/dev/null
  fi
  if ! find_nats >/dev/null; then
    echo "setup: nats-server is missing. Install the Debian/Ubuntu package 'nats-server' (apt-get install nats-server) or put a nats-server binary on PATH." >&2
    exit 1
  fi
fi
# openssl: the TLS test makes its certificates with it.
if ! command -v openssl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing openssl (Debian package openssl)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq openssl >/dev/null
fi
# Chromium for the inspector's browser test: Debian's package, driven by playwright-core (never a downloaded browser).
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (Debian package chromium)"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: /usr/bin/chromium is missing; install Debian's 'chromium' package for the browser test" >&2
    exit 1
  fi
fi
# GPUs: TensorFlow.js reaches an NVIDIA GPU through WebGPU (Dawn), which needs the Vulkan loader
# and the driver's ICD file. Only where an NVIDIA driver is loaded: install the loader (Debian
# libvulkan1, and libglvnd0 for NVIDIA's libGLX_nvidia.so.0) and make the driver's ICD file
# visible where the loader looks when the driver put it elsewhere (containers: /usr/local/nvidia).
if [ -e /proc/driver/nvidia/version ] || command -v nvidia-smi >/dev/null 2>&1; then
  if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1'; then
    if command -v apt-get >/dev/null 2>&1; then
      echo "setup: installing the Vulkan loader for WebGPU (Debian packages libvulkan1 libglvnd0)"
      sudo_cmd=""
      [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
      $sudo_cmd apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq libvulkan1 libglvnd0 >/dev/null
    else
      echo "setup: an NVIDIA driver is here but not the Vulkan loader (libvulkan.so.1): WebGPU will be skipped" >&2
    fi
  fi
  if ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
    for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/local/nvidia/icd.d/nvidia_icd.json; do
      if [ -f "$icd" ]; then
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        $sudo_cmd mkdir -p /etc/vulkan/icd.d && $sudo_cmd ln -sf "$icd" /etc/vulkan/icd.d/nvidia_icd.json
        echo "setup: pointed the Vulkan loader at NVIDIA's ICD file $icd"
        break
      fi
    done
  fi
fi
echo "setup: ready ($(node -v), $("$(find_nats)" --version))"
