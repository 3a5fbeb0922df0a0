#!/usr/bin/env bash
# The test command: prepare the machine (tests/setup.sh), then lint and run every suite.
# Extra arguments go to pytest, e.g. `tests/run.sh -k render -x`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=tests/setup.sh
source tests/setup.sh

oar_step "ruff"
ruff check runner tests bench
oar_step "shellcheck"
shellcheck -x build-all.sh tests/run.sh tests/setup.sh .ci/run bench/gpu-device.sh
shellcheck -s bash tests/setup.d/*.sh
oar_step "go test ./runner/airllmrunner/..."
(cd runner/airllmrunner && go vet ./... && go test ./...)
oar_step "pytest"
python -m pytest "$@"
