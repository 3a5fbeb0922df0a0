"""Marketing names for AMD PCI device ids (sysfs has no marketing name; rocminfo does, when installed)."""

from __future__ import annotations

import re

# (device id, PCI revision or None for any) -> name. Navi 31/32/48 share a device id across models and differ
# by revision; the revision-less entry is the family name used when the revision is unknown.
_NAMES: dict[tuple[int, int | None], str] = {
    (0x744C, 0xC8): "AMD Radeon RX 7900 XTX",
    (0x744C, 0xCC): "AMD Radeon RX 7900 XT",
    (0x744C, 0xCE): "AMD Radeon RX 7900 GRE",
    (0x744C, None): "AMD Radeon RX 7900 series",
    (0x7448, None): "AMD Radeon PRO W7900",
    (0x747E, 0xC8): "AMD Radeon RX 7800 XT",
    (0x747E, 0xFF): "AMD Radeon RX 7700 XT",
    (0x747E, None): "AMD Radeon RX 7800 XT / 7700 XT",
    (0x7480, None): "AMD Radeon RX 7600 series",
    (0x73BF, None): "AMD Radeon RX 6800 / 6900 series",
    (0x73DF, 0xC1): "AMD Radeon RX 6700 XT",
    (0x73DF, None): "AMD Radeon RX 6700 / 6750 XT series",
    (0x73FF, None): "AMD Radeon RX 6600 series",
    (0x743F, None): "AMD Radeon RX 6500 / 6400 series",
    (0x7550, 0xC0): "AMD Radeon RX 9070 XT",
    (0x7550, 0xC3): "AMD Radeon RX 9070",
    (0x7550, None): "AMD Radeon RX 9070 series",
    (0x7590, None): "AMD Radeon RX 9060 series",
    (0x15BF, None): "AMD Radeon 780M / 760M Graphics",
    (0x15C8, None): "AMD Radeon 740M Graphics",
    (0x150E, None): "AMD Radeon 890M / 880M Graphics",
    (0x1586, None): "AMD Radeon 8060S / 8050S Graphics",
    (0x1681, None): "AMD Radeon 680M / 660M Graphics",
    (0x164E, None): "AMD Radeon Graphics (Raphael)",
    (0x738C, None): "AMD Instinct MI100",
    (0x740C, None): "AMD Instinct MI250X / MI250",
    (0x740F, None): "AMD Instinct MI210",
    (0x74A1, None): "AMD Instinct MI300X",
    (0x74A0, None): "AMD Instinct MI300A",
    (0x75A0, None): "AMD Instinct MI350X",
}

_UNSAFE_RE = re.compile(r"[^A-Za-z0-9 ._+/()-]+")


def gpu_name(device_id: int, revision: int | None, gfx: str, rocminfo_name: str | None = None) -> str:
    """The name by (device, revision), else rocminfo's marketing name, the family or a generic one."""
    name = _NAMES.get((device_id, revision)) or rocminfo_name or _NAMES.get((device_id, None))
    return safe_name(name) if name else f"AMD GPU {gfx} (0x{device_id:04x})"


def safe_name(name: str) -> str:
    """Keep a name within the profile's safe character set (letters, digits, space, . _ + / ( ) -)."""
    cleaned = " ".join(_UNSAFE_RE.sub(" ", name).split())[:80].strip()
    return cleaned if cleaned[:1].isalnum() else f"AMD {cleaned}".strip()


def known_device(device_id: int) -> bool:
    """Whether the table has a name for this device id."""
    return any(dev == device_id for dev, _ in _NAMES)
