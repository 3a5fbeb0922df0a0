# shellcheck shell=bash
# Wheels of the Python build tools for the runner-only PKGBUILD test build (tests/pkg/test_static_package.py).
# makepkg refuses root, so that build runs as an unprivileged user who cannot read the root-owned venv; the test
# makes a throwaway venv from these wheels (offline). Debian's own python3-setuptools (66) cannot read the
# PEP 639 `license = "..."` in pyproject.toml, hence the newer wheels. Exports OAR_PYBUILD_WHEELS.
oar_pybuild_pins=(setuptools==84.2.1 build==1.6.1 installer==1.1.0 wheel==0.48.0 packaging==26.3 pyproject_hooks==1.3.3)
OAR_PYBUILD_WHEELS="$OAR_CACHE/pybuild-wheels-$(printf '%s\n' "${oar_pybuild_pins[@]}" | sha256sum | cut -c1-12)"
export OAR_PYBUILD_WHEELS
if [[ ! -f "$OAR_PYBUILD_WHEELS/.complete" ]]; then
  oar_step "downloading build-tool wheels into $OAR_PYBUILD_WHEELS"
  mkdir -p "$OAR_PYBUILD_WHEELS"
  "$OAR_VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary :all: \
    -d "$OAR_PYBUILD_WHEELS" "${oar_pybuild_pins[@]}"
  touch "$OAR_PYBUILD_WHEELS/.complete"
fi
unset oar_pybuild_pins
