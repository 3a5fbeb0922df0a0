#!/usr/bin/env bash
# build-all.sh: the main job. On Arch Linux with an AMD GPU: detect the hardware, render the package for it,
# build it with makepkg, install it with pacman, enable the service, calibrate, and check it with
# `ollama-airllm doctor`.
# Anywhere else: render and validate the package for the reference profile, then say what was skipped and why.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./build-all.sh [--profile FILE] [--render-only] [--no-install] [--help]

  --profile FILE   use this hardware profile instead of detecting one (Arch) or the reference
                   profile packaging/profiles/rx7900xtx.yaml (elsewhere)
  --render-only    render and validate the package files; do not build or install
  --no-install     build the package but do not install it or touch the service
  -h, --help       show this help

Output: out/pkg/ (the rendered package, buildable with `makepkg -si`), out/logs/ (one log per step).
Run it as your normal user on Arch; it uses sudo for pacman and systemctl.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$ROOT/out"
LOGS="$OUT/logs"
PKG_DIR="$OUT/pkg"
PROFILE=""
RENDER_ONLY=0
NO_INSTALL=0

while (($#)); do
  case "$1" in
    --profile)
      [[ $# -ge 2 && -n "$2" ]] || { echo "build-all.sh: --profile needs a file" >&2; exit 2; }
      PROFILE="$2"
      shift 2
      ;;
    --profile=*) PROFILE="${1#--profile=}"; shift ;;
    --render-only) RENDER_ONLY=1; shift ;;
    --no-install) NO_INSTALL=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-all.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n "$PROFILE" ]]; then
  [[ -f "$PROFILE" ]] || { echo "build-all.sh: profile $PROFILE: no such file" >&2; exit 2; }
  PROFILE="$(cd "$(dirname "$PROFILE")" && pwd)/$(basename "$PROFILE")"
fi

if [[ -t 1 ]]; then
  C_STEP=$'\033[1;34m' C_OK=$'\033[1;32m' C_FAIL=$'\033[1;31m' C_SKIP=$'\033[1;33m' C_OFF=$'\033[0m'
else
  C_STEP="" C_OK="" C_FAIL="" C_SKIP="" C_OFF=""
fi
STEP_NO=0
SKIPPED=()

# step NAME COMMAND...: run one step with its output in out/logs/NN-name.log; stop at the first failure.
step() {
  local name="$1" log start rc skipped_before
  shift
  STEP_NO=$((STEP_NO + 1))
  log="$LOGS/$(printf '%02d' "$STEP_NO")-${name// /-}.log"
  printf '%s==> [%d] %s%s\n' "$C_STEP" "$STEP_NO" "$name" "$C_OFF"
  start=$SECONDS
  rc=0
  skipped_before=${#SKIPPED[@]}
  "$@" >"$log" 2>&1 || rc=$?
  mapfile -t SKIPPED <"$SKIPS_FILE"
  if ((rc != 0)); then
    printf '%s    FAILED: %s (exit %d, %ds). Log: %s%s\n' "$C_FAIL" "$name" "$rc" $((SECONDS - start)) "$log" "$C_OFF"
    tail -n 15 "$log" | sed 's/^/    | /'
    exit 1
  fi
  if ((${#SKIPPED[@]} > skipped_before)); then
    printf '%s    ok%s (%ds), %sskipped%s: %s\n' "$C_OK" "$C_OFF" $((SECONDS - start)) "$C_SKIP" "$C_OFF" \
      "$(join_by '; ' "${SKIPPED[@]:skipped_before}")"
  else
    printf '%s    ok%s (%ds)\n' "$C_OK" "$C_OFF" $((SECONDS - start))
  fi
}

note() { printf '    %s\n' "$*"; }

join_by() {
  local sep="$1" out="$2" item
  shift 2
  for item in "$@"; do out+="$sep$item"; done
  printf '%s' "$out"
}

# skip_check "CHECK (WHY)": a check that could not run; it is listed on its step's line and in the last line.
# Steps run in subshells, so they write it to a file that step() reads back.
skip_check() {
  printf '%s\n' "$1" >>"$SKIPS_FILE"
  echo "skipped: $1"
}

# The Arch package that provides each tool this script may call.
arch_package_of() {
  case "$1" in
    python3) echo python ;;
    makepkg | pacman) echo pacman ;;
    systemctl | systemd-analyze) echo systemd ;;
    sudo) echo sudo ;;
    *) echo "$1" ;;
  esac
}

check_tools() {
  local missing=() tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || missing+=("$tool (Arch package: $(arch_package_of "$tool"))")
  done
  if ((${#missing[@]})); then
    printf 'missing tools:\n' >&2
    printf '  %s\n' "${missing[@]}" >&2
    return 1
  fi
  printf 'found: %s\n' "$*"
}

# The generator needs only light Python packages (click, rich, jinja2, pyyaml, pydantic): use the system's
# if it has them (on Arch they are the package's own dependencies), else a local venv in .venv/.
PY=python3
LIGHT_MODULES=(click rich jinja2 yaml pydantic)
MODULES_OK='import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]'
python_env() {
  if python3 -c "$MODULES_OK" "${LIGHT_MODULES[@]}"; then
    echo "using $(command -v python3) with its own packages"
    return 0
  fi
  if [[ ! -x "$ROOT/.venv/bin/python" ]] || ! "$ROOT/.venv/bin/python" -c "$MODULES_OK" "${LIGHT_MODULES[@]}"; then
    python3 -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/pip" install --disable-pip-version-check -q click rich jinja2 pyyaml pydantic
  fi
  PY="$ROOT/.venv/bin/python"
  echo "using $ROOT/.venv"
}

oar() { PYTHONPATH="$ROOT/runner${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
  'import sys; from ollama_airllm.cli import main; sys.argv[0] = "ollama-airllm"; sys.exit(main())' "$@"; }

render_pkg() {
  local args=(render -o "$PKG_DIR")
  [[ -n "$1" ]] && args+=(--profile "$1")
  oar "${args[@]}"
}

# Static checks of the rendered files; tools that are missing here are reported, not required.
validate_pkg() (
  cd "$PKG_DIR"
  bash -n PKGBUILD
  bash -n ollama-airllm-rocm.install
  if command -v shellcheck >/dev/null; then
    shellcheck -s bash PKGBUILD ollama-airllm-rocm.install
    shellcheck airllm-runner.in ollama-airllm.in
  else
    skip_check "shellcheck (not installed; Arch package: shellcheck)"
  fi
  if ! command -v makepkg >/dev/null; then
    skip_check ".SRCINFO against makepkg --printsrcinfo (makepkg not installed; Arch package: pacman)"
  elif ((EUID == 0)); then
    skip_check ".SRCINFO against makepkg --printsrcinfo (running as root: makepkg refuses it)"
  else
    diff -u .SRCINFO <(makepkg --printsrcinfo)
    echo ".SRCINFO matches makepkg --printsrcinfo"
  fi
  if command -v systemd-analyze >/dev/null; then
    local root
    root="$(mktemp -d)"
    mkdir -p "$root/usr/bin" "$root/usr/lib/systemd"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    printf '#!/bin/sh\n' >"$root/usr/bin/ollama"
    printf '#!/bin/sh\n' >"$root/usr/bin/ollama-airllm"
    chmod 755 "$root/usr/bin/ollama" "$root/usr/bin/ollama-airllm"
    cp ollama.service ollama-airllm@.service "$root/usr/lib/systemd/system/"
    systemd-analyze verify --root="$root" ollama.service ollama-airllm@check.service
    rm -rf "$root"
    systemd-analyze security --offline=true --threshold=30 ollama.service ollama-airllm@.service
  else
    skip_check "systemd-analyze verify and security (not installed; Arch package: systemd)"
  fi
)

build_pkg() (
  cd "$PKG_DIR"
  local built
  built="$(makepkg --packagelist | head -n1)"
  if [[ -f "$built" && "$built" -nt PKGBUILD ]]; then
    echo "already built: $built"
    return 0
  fi
  makepkg --syncdeps --noconfirm --cleanbuild --force
)

install_pkg() (
  cd "$PKG_DIR"
  sudo pacman -U --needed --noconfirm "$(makepkg --packagelist | head -n1)"
)

enable_service() {
  sudo systemctl daemon-reload
  sudo systemctl enable --now ollama.service
  sudo systemctl is-active ollama.service
}

run_doctor() { ollama-airllm doctor; }

mkdir -p "$LOGS"
SKIPS_FILE="$LOGS/skipped-checks.txt"
: >"$SKIPS_FILE"
cd "$ROOT"

# The checks that were skipped, for the last line.
skipped_summary() {
  ((${#SKIPPED[@]})) || return 0
  printf ' Checks skipped: %s.' "$(join_by '; ' "${SKIPPED[@]}")"
}

IS_ARCH=0
[[ -f /etc/arch-release ]] && command -v pacman >/dev/null && IS_ARCH=1
FULL=0
WHY=""
if ((RENDER_ONLY)); then
  WHY="--render-only was given"
elif ((!IS_ARCH)); then
  WHY="this machine is not Arch Linux (no /etc/arch-release and pacman)"
elif ((EUID == 0)); then
  WHY="running as root: makepkg refuses it; run ./build-all.sh as your normal user"
else
  FULL=1
fi

step "prerequisites" check_tools python3 bash
step "python environment" python_env

if ((FULL)) && [[ -z "$PROFILE" ]]; then
  detect_rc=0
  STEP_NO=$((STEP_NO + 1))
  printf '%s==> [%d] %s%s\n' "$C_STEP" "$STEP_NO" "detect hardware" "$C_OFF"
  oar detect -o "$OUT/profile.yaml" >"$LOGS/$(printf '%02d' "$STEP_NO")-detect.log" 2>&1 || detect_rc=$?
  if ((detect_rc == 3)); then
    printf '%s    no usable AMD GPU%s: %s\n' "$C_SKIP" "$C_OFF" "$(tail -n1 "$LOGS/$(printf '%02d' "$STEP_NO")-detect.log")"
    FULL=0
    WHY="no usable AMD GPU was detected"
  elif ((detect_rc != 0)); then
    printf '%s    FAILED: detect hardware (exit %d). Log: %s%s\n' "$C_FAIL" "$detect_rc" \
      "$LOGS/$(printf '%02d' "$STEP_NO")-detect.log" "$C_OFF"
    exit 1
  else
    PROFILE="$OUT/profile.yaml"
    printf '%s    ok%s: %s\n' "$C_OK" "$C_OFF" "$PROFILE"
  fi
fi

step "render package" render_pkg "$PROFILE"
note "profile: ${PROFILE:-$ROOT/packaging/profiles/rx7900xtx.yaml} -> $PKG_DIR"
step "validate package" validate_pkg

if ((!FULL)); then
  printf '%sSKIPPED makepkg, pacman -U, systemctl enable, calibrate and doctor: %s; the package was rendered and validated in %s.%s%s\n' \
    "$C_SKIP" "$WHY" "$PKG_DIR" "$(skipped_summary)" "$C_OFF"
  exit 0
fi

step "prerequisites for building" check_tools makepkg pacman sudo systemctl
step "makepkg" build_pkg
if ((NO_INSTALL)); then
  printf '%sSKIPPED pacman -U, systemctl enable, calibrate and doctor: --no-install was given; the package is in %s.%s%s\n' \
    "$C_SKIP" "$PKG_DIR" "$(skipped_summary)" "$C_OFF"
  exit 0
fi
step "pacman -U" install_pkg
step "systemctl enable --now ollama" enable_service
step "ollama-airllm calibrate" sudo ollama-airllm calibrate
step "ollama-airllm doctor" run_doctor
printf '%sDone: Ollama with the AirLLM runner is installed and running (profile %s).%s%s\n' \
  "$C_OK" "$PROFILE" "$(skipped_summary)" "$C_OFF"
