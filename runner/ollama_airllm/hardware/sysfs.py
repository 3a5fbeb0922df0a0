"""Read AMD GPU facts from sysfs: KFD topology nodes and DRM cards (arch-packaging-and-amd.md §4.1, §4.2)."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

AMD_VENDOR_ID = 0x1002
KFD_NODES = Path("sys/class/kfd/kfd/topology/nodes")
DRM_CLASS = Path("sys/class/drm")
_CARD_RE = re.compile(r"^card[0-9]+$")
_RENDER_RE = re.compile(r"^renderD([0-9]+)$")
_SLOT_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
# KFD `properties` keys the detector needs as integers; any other key may hold anything.
_KFD_INT_KEYS = ("gfx_target_version", "vendor_id", "device_id", "location_id", "domain", "drm_render_minor")


# A sysfs attribute is at most a page; anything much larger is not the kernel's file.
MAX_READ_BYTES = 64 * 1024


class MalformedSysfs(UserError):
    """A sysfs file exists but does not have the kernel's format."""


def read_small_file(path: Path, limit: int = MAX_READ_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, without blocking on a FIFO or a device.

    FileNotFoundError and PermissionError propagate (callers treat them as absent or masked); a symlink
    loop, a directory, a FIFO, a device or an oversized file is MalformedSysfs.
    """
    try:
        _require_regular(path, os.stat(path).st_mode)  # a device is refused before it is opened
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:
        raise MalformedSysfs(f"{path}: cannot open it ({_why(exc)})") from None
    try:
        _require_regular(path, os.fstat(fd).st_mode)  # what was opened, in case it was swapped
        chunks, size = [], 0
        while chunk := os.read(fd, limit + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise MalformedSysfs(f"{path}: larger than {limit} bytes, too large for this file")
        return b"".join(chunks)
    except OSError as exc:
        raise MalformedSysfs(f"{path}: cannot read it ({_why(exc)})") from None
    finally:
        os.close(fd)


def _require_regular(path: Path, mode: int) -> None:
    kind = stat.S_IFMT(mode)
    if kind != stat.S_IFREG:
        raise MalformedSysfs(f"{path}: is {_KINDS.get(kind, 'not a regular file')}, not a regular file")


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink loop"
    return exc.strerror or exc.__class__.__name__


def read_text(path: Path, limit: int = MAX_READ_BYTES) -> str:
    """A small sysfs/procfs file as ASCII text; non-ASCII bytes are MalformedSysfs."""
    try:
        return read_small_file(path, limit).decode("ascii")
    except UnicodeDecodeError:
        raise MalformedSysfs(f"{path}: not a kernel attribute file (non-ASCII bytes)") from None


def resolve(path: Path) -> Path | None:
    """The real path of `path`, or None when it does not exist; a symlink loop is MalformedSysfs."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MalformedSysfs(f"{path}: cannot follow it (a symlink loop)") from None
        return None


@dataclass(frozen=True)
class KfdNode:
    """A KFD topology node that is a GPU (gfx_target_version != 0)."""

    node: int
    gfx_target_version: int
    vendor_id: int
    device_id: int
    pci_slot: str | None
    render_minor: int | None
    cpu_cores: int
    unique_id: int | None
    mem_bank_bytes: int | None
    properties_path: Path


@dataclass
class DrmCard:
    """An AMD `/sys/class/drm/cardN/device` directory."""

    name: str
    device_dir: Path
    device_id: int | None
    revision: int | None
    pci_slot: str | None
    render_minors: set[int] = field(default_factory=set)
    vram_total: int | None = None
    vram_used: int | None = None
    gtt_total: int | None = None
    has_vram_vendor: bool = False
    has_board_info: bool = False


def read_key_values(path: Path) -> dict[str, str]:
    """Parse a KFD `properties` file: `key value` lines. Unknown and non-numeric keys are kept as text."""
    text = read_text(path)
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            values[key] = value.strip()
    return values


def _int(values: dict[str, str], key: str, path: Path, base: int = 10) -> int | None:
    raw = values.get(key)
    if raw is None:
        return None
    try:
        number = int(raw, base)
    except ValueError:
        kind = "decimal" if base == 10 else "hex"
        raise MalformedSysfs(f"{path}: {key} should be a {kind} number, got {raw!r}") from None
    if number < 0:
        raise MalformedSysfs(f"{path}: {key} should not be negative, got {raw!r}")
    return number


def _read_int_file(path: Path, base: int = 10) -> int | None:
    """A one-number sysfs file like `mem_info_vram_total` (decimal) or `vendor` (`0x1002`); None if absent."""
    try:
        raw = read_text(path).strip()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise MalformedSysfs(f"{path}: cannot read it ({exc.__class__.__name__})") from None
    try:
        return int(raw, base)
    except ValueError:
        kind = "a decimal number" if base == 10 else "a hex number like 0x1002"
        raise MalformedSysfs(f"{path}: should hold {kind}, got {raw!r}") from None


def _pci_slot(domain: int | None, location_id: int | None) -> str | None:
    """KFD location_id = (bus << 8) | (device << 3) | function, plus the PCI domain."""
    if location_id is None or location_id == 0:
        return None
    bus, dev, fn = location_id >> 8, (location_id >> 3) & 0x1F, location_id & 0x7
    return f"{domain or 0:04x}:{bus:02x}:{dev:02x}.{fn}"


def read_kfd_gpu_nodes(sysfs_root: Path) -> tuple[list[KfdNode], list[str]]:
    """GPU nodes of the KFD topology, by node id, and notes about nodes that could not be read."""
    nodes_dir = sysfs_root / KFD_NODES
    if not nodes_dir.is_dir():
        return [], [f"{nodes_dir} does not exist (amdgpu/KFD not loaded?)"]
    gpus: list[KfdNode] = []
    notes: list[str] = []
    entries = sorted((p for p in nodes_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for entry in entries:
        path = entry / "properties"
        try:
            values = read_key_values(path)
        except FileNotFoundError:
            notes.append(f"{path} is missing; node skipped")
            continue
        except PermissionError:
            notes.append(f"{path} is not readable (masked in a container?); node skipped")
            continue
        ints = {key: _int(values, key, path) for key in _KFD_INT_KEYS}
        gfx = ints["gfx_target_version"]
        if gfx is None:
            raise MalformedSysfs(f"{path}: no gfx_target_version line; is this a KFD properties file?")
        if gfx == 0:
            continue  # a CPU node
        if (ints["device_id"] or 0) > 0xFFFF:
            raise MalformedSysfs(f"{path}: device_id should be a 16-bit PCI id, got {ints['device_id']}")
        if ints["vendor_id"] != AMD_VENDOR_ID:
            notes.append(f"{path}: vendor_id {ints['vendor_id']} is not AMD (4098); node skipped")
            continue
        gpus.append(
            KfdNode(
                node=int(entry.name),
                gfx_target_version=gfx,
                vendor_id=AMD_VENDOR_ID,
                device_id=ints["device_id"] or 0,
                pci_slot=_pci_slot(ints["domain"], ints["location_id"]),
                render_minor=ints["drm_render_minor"] or None,
                cpu_cores=_int(values, "cpu_cores_count", path) or 0,
                unique_id=_int(values, "unique_id", path) or None,
                mem_bank_bytes=_mem_bank_bytes(entry),
                properties_path=path,
            )
        )
    return gpus, notes


def _mem_bank_bytes(node_dir: Path) -> int | None:
    """VRAM from the node's `mem_banks/*/properties` (heap_type 1 or 2 = frame buffer), a fallback for DRM."""
    total = 0
    for bank in sorted((node_dir / "mem_banks").glob("*/properties")):
        try:
            values = read_key_values(bank)
        except OSError:
            continue
        if values.get("heap_type") in {"1", "2"}:
            total += _int(values, "size_in_bytes", bank) or 0
    return total or None


def read_drm_cards(sysfs_root: Path) -> list[DrmCard]:
    """AMD cards under /sys/class/drm (connector entries such as card1-DP-1 are skipped)."""
    drm = sysfs_root / DRM_CLASS
    if not drm.is_dir():
        return []
    entries = sorted((p for p in drm.iterdir() if _CARD_RE.match(p.name)), key=lambda p: int(p.name[4:]))
    render_devices = {
        int(m[1]): resolve(p / "device") for p in drm.iterdir() if (m := _RENDER_RE.match(p.name))
    }
    cards = []
    for entry in entries:
        device = entry / "device"
        if _read_int_file(device / "vendor", 16) != AMD_VENDOR_ID:
            continue
        card = DrmCard(
            name=entry.name,
            device_dir=device,
            device_id=_read_int_file(device / "device", 16),
            revision=_read_int_file(device / "revision", 16),
            pci_slot=_slot_name(_uevent(device / "uevent").get("PCI_SLOT_NAME", "")),
            vram_total=_read_int_file(device / "mem_info_vram_total"),
            vram_used=_read_int_file(device / "mem_info_vram_used"),
            gtt_total=_read_int_file(device / "mem_info_gtt_total"),
            has_vram_vendor=(device / "mem_info_vram_vendor").exists(),
            has_board_info=(device / "board_info").exists(),
        )
        resolved = resolve(device)
        card.render_minors = {minor for minor, dev in render_devices.items() if dev and dev == resolved}
        card.render_minors |= {int(m[1]) for p in _listdir(device / "drm") if (m := _RENDER_RE.match(p.name))}
        cards.append(card)
    return cards


def _slot_name(value: str) -> str | None:
    value = value.strip().lower()
    return value if _SLOT_RE.fullmatch(value) else None


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _uevent(path: Path) -> dict[str, str]:
    try:
        text = read_small_file(path).decode("ascii", errors="replace")
    except (FileNotFoundError, PermissionError):
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def match_card(node: KfdNode, cards: list[DrmCard]) -> DrmCard | None:
    """The DRM card of a KFD node: by render minor, else by PCI address, else by a unique device id."""
    for card in cards:
        if node.render_minor is not None and node.render_minor in card.render_minors:
            return card
    for card in cards:
        if node.pci_slot is not None and card.pci_slot == node.pci_slot:
            return card
    same_id = [card for card in cards if card.device_id == node.device_id]
    return same_id[0] if len(same_id) == 1 else None
