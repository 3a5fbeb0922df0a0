"""Turn sysfs facts into a list of GPUs, choose the visible ones and the HSA override, and build a Profile.

Override policy (one HSA_OVERRIDE_GFX_VERSION for all visible GPUs): Ollama v0.34.4 reads only the plain
variable when it filters devices, so with a per-node `HSA_OVERRIDE_GFX_VERSION_<n>` alone it would still
drop the GPU. An override is harmless on a GPU whose own target is the override's target (gfx1100 under
11.0.0), so GPUs are grouped by the kernels they would run; if the candidates need different overrides, the
group with the most VRAM is used (ties: the group without an override) and the others are left out with a
note.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ..errors import EXIT_NO_GPU, UserError
from ..profile import Profile, validate_profile
from .gfx import (
    DEFAULT_VISIBLE_IGPU_TARGETS,
    ROCM_V7_2_TARGETS,
    GfxVersion,
    effective_target,
    is_supported,
    needed_override,
)
from .names import gpu_name, known_device
from .rocm_tools import RocmAgent, parse_rocm_smi_vram, parse_rocminfo, run_tool
from .sysfs import DrmCard, KfdNode, MalformedSysfs, match_card, read_drm_cards, read_kfd_gpu_nodes
from .system import free_disk_bytes, read_ram_bytes

GIB = 1 << 30


@dataclass
class DetectedGPU:
    """One AMD GPU and what detect concluded about it."""

    index: int
    node: KfdNode
    name: str
    gfx: str
    pci_device_id: int
    pci_slot: str | None
    render_minor: int | None
    vram_total: int
    integrated: bool
    visible: bool = False
    note: str = ""

    @property
    def supported(self) -> bool:
        return is_supported(self.gfx)

    @property
    def override(self) -> str | None:
        return needed_override(self.gfx)

    def profile_data(self) -> dict[str, object]:
        """This GPU as the profile's `gpus` entry."""
        return {
            "index": self.index,
            "name": self.name,
            "gfx": self.gfx,
            "pci_device_id": f"0x{self.pci_device_id:04x}",
            "pci_slot": self.pci_slot,
            "render_minor": self.render_minor
            if self.render_minor and 128 <= self.render_minor <= 1023
            else None,
            "kfd_node": self.node.node,
            "vram_total_bytes": self.vram_total,
            "integrated": self.integrated,
            "supported": self.supported,
        }


@dataclass
class Detection:
    """Everything detect found: GPUs (visible or not), the chosen override, system facts and notes."""

    gpus: list[DetectedGPU]
    hsa_override: str | None
    ram_bytes: int | None
    models_disk_free_bytes: int | None
    notes: list[str]

    @property
    def visible(self) -> list[DetectedGPU]:
        return [gpu for gpu in self.gpus if gpu.visible]


class ToolOutputs:
    """rocminfo / rocm-smi output to fall back on: given as text, or run on first use when `run` is true."""

    def __init__(self, rocminfo: str | None = None, rocm_smi_vram_json: str | None = None, run: bool = False):
        self._rocminfo, self._smi, self._run = rocminfo, rocm_smi_vram_json, run
        self.notes: list[str] = []

    @functools.cached_property
    def agents(self) -> list[RocmAgent]:
        text = self._rocminfo if self._rocminfo is not None or not self._run else run_tool(["rocminfo"])
        agents = parse_rocminfo(text) if text else []
        if text and not agents:
            self.notes.append("rocminfo output has no GPU agent; ignored")
        return agents

    @functools.cached_property
    def smi_vram(self) -> dict[int, int]:
        text = self._smi
        if text is None and self._run:
            text = run_tool(["rocm-smi", "--showmeminfo", "vram", "--json"])
        if not text:
            return {}
        try:
            return parse_rocm_smi_vram(text)
        except ValueError as exc:
            self.notes.append(f"rocm-smi --showmeminfo vram --json output ignored: {exc}")
            return {}


def is_integrated(vram: int | None, gtt: int | None, dgpu_marker: bool, cpu_cores: int) -> bool:
    """Ollama's Linux heuristic (small VRAM, big GTT, no dGPU marker), or a KFD node with CPU cores."""
    if cpu_cores > 0:
        return True
    if dgpu_marker or vram is None or gtt is None:
        return False
    return vram <= 4 * GIB and gtt >= 8 * GIB and gtt >= 4 * vram


def find_gpus(sysfs_root: Path, tools: ToolOutputs) -> tuple[list[DetectedGPU], list[str]]:
    """AMD GPUs from KFD + DRM, ordered by KFD node (that order is the ROCm device ordinal)."""
    nodes, notes = read_kfd_gpu_nodes(sysfs_root)
    cards = read_drm_cards(sysfs_root)
    if not nodes:
        drm = ", ".join(card.name for card in cards)
        extra = (
            f"; amdgpu cards {drm} exist but KFD exposes no GPU node, so ROCm cannot use them" if drm else ""
        )
        raise UserError(
            f"no AMD GPU found: no GPU node in {sysfs_root / 'sys/class/kfd/kfd/topology/nodes'}"
            + extra
            + ("; " + "; ".join(notes) if notes else ""),
            exit_code=EXIT_NO_GPU,
        )
    by_pci_order = sorted(range(len(nodes)), key=lambda i: nodes[i].pci_slot or "")
    gpus = []
    for index, node in enumerate(nodes):
        try:
            gfx = GfxVersion.from_kfd(node.gfx_target_version)
        except ValueError as exc:
            raise MalformedSysfs(f"{node.properties_path}: {exc}") from None
        assert gfx is not None  # CPU nodes were dropped
        card = match_card(node, cards)
        sysfs_vram = card.vram_total if card and card.vram_total is not None else node.mem_bank_bytes
        need_tools = sysfs_vram is None or not known_device(node.device_id)
        agent = _agent_for(node, tools.agents) if need_tools else None
        smi = tools.smi_vram if sysfs_vram is None else {}
        # rocm-smi numbers devices its own way; trust its ordinals (in PCI order) only when the counts agree.
        smi_total = smi.get(by_pci_order.index(index)) if len(smi) == len(nodes) else None
        vram, source = _vram(node, card, agent, smi_total)
        if vram is None:
            notes.append(
                f"KFD node {node.node} ({gfx.name}): no VRAM size in sysfs, rocm-smi or rocminfo; using 0"
            )
        elif not source.endswith("mem_info_vram_total"):
            notes.append(f"KFD node {node.node} ({gfx.name}): VRAM size from {source}")
        marker = card is not None and (card.has_vram_vendor or card.has_board_info)
        gpus.append(
            DetectedGPU(
                index=index,
                node=node,
                name=gpu_name(
                    node.device_id,
                    card.revision if card else None,
                    gfx.name,
                    agent.marketing_name if agent else None,
                ),
                gfx=gfx.name,
                pci_device_id=node.device_id,
                pci_slot=node.pci_slot or (card.pci_slot if card else None),
                render_minor=node.render_minor,
                vram_total=vram or 0,
                integrated=is_integrated(vram, card.gtt_total if card else None, marker, node.cpu_cores)
                or (agent is not None and agent.apu),
            )
        )
    return gpus, notes + tools.notes


def _agent_for(node: KfdNode, agents: list[RocmAgent]) -> RocmAgent | None:
    for agent in agents:
        if agent.node == node.node:
            return agent
    location = None
    if node.pci_slot:
        _, bus, devfn = node.pci_slot.split(":")
        dev, fn = devfn.split(".")
        location = (int(bus, 16) << 8) | (int(dev, 16) << 3) | int(fn)
    return next((agent for agent in agents if location and agent.bdfid == location), None)


def _vram(
    node: KfdNode, card: DrmCard | None, agent: RocmAgent | None, smi: int | None
) -> tuple[int | None, str]:
    """VRAM total from DRM mem_info_vram_total, else KFD mem_banks, else rocm-smi, else rocminfo's pool."""
    if card is not None and card.vram_total is not None:
        return card.vram_total, f"{card.device_dir}/mem_info_vram_total"
    if node.mem_bank_bytes:
        return node.mem_bank_bytes, "KFD mem_banks"
    if smi is not None:
        return smi, "rocm-smi"
    if agent is not None and agent.global_pool_bytes:
        return agent.global_pool_bytes, "rocminfo (approximate)"
    return None, "unknown"


def choose_visible(gpus: list[DetectedGPU], include_igpu: bool) -> str | None:
    """Mark the GPUs Ollama should use (setting `visible` and `note`); return the HSA override they need."""
    candidates = []
    for gpu in gpus:
        if effective_target(gpu.gfx) is None:
            gpu.note = (
                f"{gpu.gfx} has no kernels in Ollama's rocm_v7_2 build and no known override (use Vulkan)"
            )
        elif gpu.integrated and not include_igpu and gpu.gfx not in DEFAULT_VISIBLE_IGPU_TARGETS:
            gpu.note = "integrated GPU; pass --include-igpu to use it"
        else:
            candidates.append(gpu)
    options: list[tuple[str | None, list[DetectedGPU]]] = [(None, [g for g in candidates if g.supported])]
    for override in dict.fromkeys(g.override for g in candidates if g.override):
        target = GfxVersion.from_override(override).name
        options.append((override, [g for g in candidates if g.override == override or g.gfx == target]))
    options = [option for option in options if option[1]]
    if not options:
        return None
    override, chosen = max(options, key=lambda o: (sum(g.vram_total for g in o[1]), o[0] is None))
    for gpu in candidates:
        if gpu in chosen:
            gpu.visible = True
            gpu.note = f"HSA_OVERRIDE_GFX_VERSION={override}" if gpu.override else ""
        elif gpu.override:
            gpu.note = f"left out: needs HSA_OVERRIDE_GFX_VERSION={gpu.override}, unlike the GPUs chosen"
        else:
            target = GfxVersion.from_override(override).name if override else "?"
            gpu.note = (
                f"left out: the chosen GPUs need HSA_OVERRIDE_GFX_VERSION={override} ({target} kernels)"
            )
    return override


def detect(
    sysfs_root: Path, proc_root: Path, models_dir: Path, include_igpu: bool, tools: ToolOutputs
) -> Detection:
    """Read the machine (or fixture trees) and decide which GPUs to use."""
    gpus, notes = find_gpus(sysfs_root, tools)
    override = choose_visible(gpus, include_igpu)
    if not any(gpu.visible for gpu in gpus):
        found = "; ".join(f"{gpu.name} ({gpu.gfx}): {gpu.note}" for gpu in gpus)
        raise UserError(f"no AMD GPU that Ollama's ROCm build can use: {found}", exit_code=EXIT_NO_GPU)
    return Detection(gpus, override, read_ram_bytes(proc_root), free_disk_bytes(models_dir), notes)


def default_name(detection: Detection) -> str:
    """A profile name from the visible GPUs, e.g. `gfx1100` or `2x-gfx1100`."""
    targets = [gpu.gfx for gpu in detection.visible]
    parts = [f"{targets.count(t)}x-{t}" if targets.count(t) > 1 else t for t in dict.fromkeys(targets)]
    return "-".join(parts)


def to_profile(
    detection: Detection, name: str, models_dir: str, source: str = "detected hardware"
) -> Profile:
    """The validated profile for a detection (amdgpu_targets = only the kernels the visible GPUs run)."""
    runs = {effective_target(gpu.gfx) for gpu in detection.visible}
    data = {
        "schema_version": 1,
        "name": name,
        "system": {
            "ram_bytes": detection.ram_bytes,
            "models_disk_free_bytes": detection.models_disk_free_bytes,
        },
        "gpus": [gpu.profile_data() for gpu in detection.gpus],
        "amdgpu_targets": [t for t in ROCM_V7_2_TARGETS if t in runs],
        "hsa_override_gfx_version": detection.hsa_override,
        "visible_devices": [gpu.index for gpu in detection.visible],
        "ollama": {"models_dir": models_dir},
        "airllm": {"cache_dir": f"{models_dir.rstrip('/')}/airllm"},
    }
    return validate_profile(data, source)
