# shellcheck shell=bash
# The real OpenClaw CLI (npm `openclaw`), a client the e2e suite drives through the patched Ollama.
# It needs Node >= 24.16 and checks that while it installs, so npm's `node` package (a Node 24 binary
# from the registry) is installed first and put on PATH for the install and for every run: the
# wrapper $OPENCLAW_BIN does that. Cached under $OAR_CACHE keyed by both versions.
OAR_OPENCLAW_VERSION=2026.9.6
OAR_OPENCLAW_NODE_VERSION=24.21.0
oar_claw_dir="$OAR_CACHE/openclaw-$OAR_OPENCLAW_VERSION-node$OAR_OPENCLAW_NODE_VERSION"
if [[ ! -x "$oar_claw_dir/openclaw" ]]; then
  oar_step "npm install node@$OAR_OPENCLAW_NODE_VERSION openclaw@$OAR_OPENCLAW_VERSION"
  rm -rf "$oar_claw_dir.tmp"
  npm install --prefix "$oar_claw_dir.tmp/node" --no-audit --no-fund --loglevel=error \
    "node@$OAR_OPENCLAW_NODE_VERSION" >/dev/null
  PATH="$oar_claw_dir.tmp/node/node_modules/.bin:$PATH" npm install --prefix "$oar_claw_dir.tmp/claw" \
    --no-audit --no-fund --loglevel=error "openclaw@$OAR_OPENCLAW_VERSION" >/dev/null
  # The wrapper names the final directory, so it is written for it and the whole tree moved there.
  # shellcheck disable=SC2016  # $PATH and "$@" are the wrapper's own
  printf '#!/bin/sh\nPATH=%q/node/node_modules/.bin:$PATH exec %q/claw/node_modules/.bin/openclaw "$@"\n' \
    "$oar_claw_dir" "$oar_claw_dir" >"$oar_claw_dir.tmp/openclaw"
  chmod 755 "$oar_claw_dir.tmp/openclaw"
  rm -rf "$oar_claw_dir"
  mv "$oar_claw_dir.tmp" "$oar_claw_dir"
  "$oar_claw_dir/openclaw" --version >/dev/null
fi
export OPENCLAW_BIN="$oar_claw_dir/openclaw"
unset oar_claw_dir
