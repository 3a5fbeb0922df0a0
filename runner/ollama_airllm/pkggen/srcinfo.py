""".SRCINFO text, in exactly the layout `makepkg --printsrcinfo` writes for a single (non-split) package."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# makepkg's order (libmakepkg/srcinfo.sh, srcinfo_write_global); checksum arrays follow known_hash_algos.
_SINGLE = ("pkgdesc", "pkgver", "pkgrel", "epoch", "url", "install", "changelog")
_MULTI = (
    "arch", "groups", "license", "checkdepends", "makedepends", "depends", "optdepends", "provides",
    "conflicts", "replaces", "noextract", "options", "backup", "source", "validpgpkeys",
    "cksums", "md5sums", "sha1sums", "sha224sums", "sha256sums", "sha384sums", "sha512sums", "b2sums",
)  # fmt: skip


def srcinfo(pkgname: str, fields: Mapping[str, str | Sequence[str]]) -> str:
    """`fields` holds the PKGBUILD's global variables with their values after bash expansion."""
    unknown = set(fields) - set(_SINGLE) - set(_MULTI)
    if unknown:
        raise ValueError(f"not a .SRCINFO field: {', '.join(sorted(unknown))}")
    lines = [f"pkgbase = {pkgname}"]
    for key in _SINGLE:
        value = fields.get(key)
        if value is not None:
            lines.append(f"\t{key} = {_normalize(str(value))}")
    for key in _MULTI:
        for value in fields.get(key, ()):
            lines.append(f"\t{key} = {_normalize(value)}")
    lines += ["", f"pkgname = {pkgname}"]
    return "\n".join(lines) + "\n"


def _normalize(value: str) -> str:
    """makepkg squeezes runs of whitespace to one space and strips both ends."""
    return " ".join(value.split())
