# shellcheck shell=bash
# A minimal Debian bookworm root filesystem with systemd, for the container stage
# (tests/system, marker `container`): systemd-nspawn boots it and the package is
# installed into it with pacman. Built once with debootstrap from the mirror apt uses,
# cached under "$OAR_CACHE/rootfs-<hash of suite and package list>". Exports OAR_ROOTFS.
# Skipped (OAR_ROOTFS left empty) where the stage cannot run: not root, or no debootstrap.
OAR_ROOTFS_SUITE=bookworm
OAR_ROOTFS_PACKAGES=(
  systemd systemd-sysv dbus libpam-systemd udev pacman-package-manager python3 iproute2 procps
  util-linux ca-certificates
)
# udev is there for the `render` group its postinst creates, as Arch's systemd does.
oar_rootfs_key="$(printf '%s\n' "$OAR_ROOTFS_SUITE" "${OAR_ROOTFS_PACKAGES[@]}" | sha256sum | cut -c1-16)"
export OAR_ROOTFS=""
if [[ $(id -u) -eq 0 ]] && command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null; then
  oar_rootfs_dir="$OAR_CACHE/rootfs-$oar_rootfs_key"
  if [[ ! -x "$oar_rootfs_dir/usr/lib/systemd/systemd" ]]; then
    # The Debian mirror apt already uses: the first http(s) URI ending in /debian in its sources.
    oar_mirror="$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
      | head -n1 | tr -d ' ' || true)"
    oar_mirror="${oar_mirror:-http://deb.debian.org/debian}"
    oar_step "debootstrap $OAR_ROOTFS_SUITE from $oar_mirror into $oar_rootfs_dir (one-time, a few minutes)"
    oar_rootfs_tmp="$oar_rootfs_dir.tmp.$$"
    rm -rf "$oar_rootfs_tmp"
    oar_packages_csv="$(IFS=,; echo "${OAR_ROOTFS_PACKAGES[*]}")"
    nice debootstrap --variant=minbase --include="$oar_packages_csv" \
      "$OAR_ROOTFS_SUITE" "$oar_rootfs_tmp" "$oar_mirror" >"$OAR_CACHE/debootstrap.log" 2>&1 \
      || { tail -n 20 "$OAR_CACHE/debootstrap.log" >&2; rm -rf "$oar_rootfs_tmp"; false; }
    # Boot without prompts: no getty, no first-boot wizard, no machine-id or hostname
    # (systemd takes them from nspawn at each boot); a clean apt cache.
    rm -f "$oar_rootfs_tmp/etc/machine-id" "$oar_rootfs_tmp/etc/hostname"
    for oar_unit in getty.target console-getty.service systemd-firstboot.service; do
      ln -sf /dev/null "$oar_rootfs_tmp/etc/systemd/system/$oar_unit"
    done
    unset oar_unit
    rm -rf "$oar_rootfs_tmp"/var/cache/apt/archives/*.deb "$oar_rootfs_tmp"/var/lib/apt/lists/*
    mv "$oar_rootfs_tmp" "$oar_rootfs_dir"
  fi
  export OAR_ROOTFS="$oar_rootfs_dir"
  # makepkg asks the (empty) local pacman database what is installed, for .BUILDINFO.
  mkdir -p /var/lib/pacman
  unset oar_rootfs_dir oar_rootfs_tmp oar_mirror oar_packages_csv
fi
unset oar_rootfs_key
