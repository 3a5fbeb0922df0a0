"""Render the Arch package (PKGBUILD, .SRCINFO, .install, systemd units, env and sysusers/tmpfiles files)."""
