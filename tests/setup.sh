#!/usr/bin/env bash
# Install what the test suite needs, idempotently: Debian packages, the Python venv
# (cached per Python and torch version), and the slow builds (cached per version).
# Each step is a file in tests/setup.d/, sourced in order so it can export paths.
# Sourced by tests/run.sh; run it alone to prepare a machine: `bash tests/setup.sh`.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export REPO_ROOT
export OAR_CACHE="${OAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ollama-airllm-rocm}"
mkdir -p "$OAR_CACHE"

oar_step() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

for step in "$REPO_ROOT"/tests/setup.d/*.sh; do
  # shellcheck source=/dev/null
  source "$step"
done
