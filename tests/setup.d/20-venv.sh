# shellcheck shell=bash
# The Python venv. torch is several GB, so the venv is cached per Python and torch
# version and reused; the rest is pinned in tests/constraints.txt and cheap to re-check.
OAR_PY="${OAR_PY:-python3}"
OAR_TORCH="$(sed -n 's/^torch==//p' "$REPO_ROOT/tests/constraints.txt")"
OAR_PYTAG="$("$OAR_PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
export OAR_VENV="${OAR_VENV:-$OAR_CACHE/venv-$OAR_PYTAG-torch$OAR_TORCH}"
if [[ ! -x "$OAR_VENV/bin/python" ]]; then
  oar_step "creating $OAR_VENV"
  "$OAR_PY" -m venv "$OAR_VENV"
fi
oar_stamp="$OAR_VENV/.oar-installed-$(cat "$REPO_ROOT/pyproject.toml" "$REPO_ROOT/tests/constraints.txt" | sha256sum | cut -c1-16)"
if [[ ! -e "$oar_stamp" ]]; then
  oar_step "pip install -e .[test] into $OAR_VENV"
  "$OAR_VENV/bin/pip" install -q --disable-pip-version-check -c "$REPO_ROOT/tests/constraints.txt" \
    "torch==$OAR_TORCH"
  "$OAR_VENV/bin/pip" install -q --disable-pip-version-check -c "$REPO_ROOT/tests/constraints.txt" \
    -e "${REPO_ROOT}[test]"
  rm -f "$OAR_VENV"/.oar-installed-*
  touch "$oar_stamp"
else
  # A fresh clone elsewhere: point the editable install at it (no downloads).
  "$OAR_VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$REPO_ROOT"
fi
unset oar_stamp
export PATH="$OAR_VENV/bin:$PATH"
