# shellcheck shell=bash
# The real opencode CLI (npm `opencode-ai`), a client the runner's tests drive end to end.
# Installed once under $OAR_CACHE keyed by version; its postinstall picks the prebuilt
# linux-x64 binary from the registry package opencode-linux-x64. opencode looks for ripgrep
# on PATH and downloads it otherwise, so the Debian package is installed here too.
OAR_OPENCODE_VERSION=1.18.33
oar_oc_dir="$OAR_CACHE/opencode-$OAR_OPENCODE_VERSION"
if [[ ! -x "$oar_oc_dir/node_modules/.bin/opencode" ]]; then
  oar_step "npm install opencode-ai@$OAR_OPENCODE_VERSION"
  rm -rf "$oar_oc_dir.tmp"
  npm install --prefix "$oar_oc_dir.tmp" --no-audit --no-fund --loglevel=error \
    "opencode-ai@$OAR_OPENCODE_VERSION" >/dev/null
  "$oar_oc_dir.tmp/node_modules/.bin/opencode" --version >/dev/null
  rm -rf "$oar_oc_dir"
  mv "$oar_oc_dir.tmp" "$oar_oc_dir"
fi
if ! command -v rg >/dev/null; then
  oar_step "apt-get install ripgrep (for opencode)"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ripgrep >/dev/null
fi
export OPENCODE_BIN="$oar_oc_dir/node_modules/.bin/opencode"
unset oar_oc_dir
