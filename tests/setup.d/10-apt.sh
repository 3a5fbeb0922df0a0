# shellcheck shell=bash
# Debian packages: Arch's makepkg and pacman, shellcheck, systemd tools, debootstrap.
OAR_APT_PACKAGES=(
  makepkg pacman-package-manager libarchive-tools fakeroot zstd
  shellcheck systemd systemd-container debootstrap iproute2 git curl jq
  cmake ninja-build build-essential
  python3-build python3-installer python3-setuptools python3-wheel
)
oar_missing=()
for p in "${OAR_APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || oar_missing+=("$p")
done
if ((${#oar_missing[@]})); then
  oar_step "apt-get install ${oar_missing[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${oar_missing[@]}" >/dev/null
fi
unset oar_missing
