"""AMD gfx target names, KFD version numbers and what Ollama v0.34.4's `rocm_v7_2` build supports."""

from __future__ import annotations

import re
from dataclasses import dataclass

# LLVM targets of upstream's `rocm_v7_2_linux` preset (gfx908:xnack-, gfx90a:xnack± count as the bare name).
ROCM_V7_2_TARGETS: tuple[str, ...] = (
    "gfx908", "gfx90a", "gfx942", "gfx950",
    "gfx1030", "gfx1100", "gfx1101", "gfx1102", "gfx1150", "gfx1151", "gfx1200", "gfx1201",
)  # fmt: skip

# Unsupported targets and the HSA_OVERRIDE_GFX_VERSION that makes ROCm run a supported target's kernels on
# them (arch-packaging-and-amd.md §3.1). Targets missing here have no working override (use Vulkan).
OVERRIDES: dict[str, str] = {
    "gfx1031": "10.3.0",  # RX 6700/6700 XT/6750 XT
    "gfx1032": "10.3.0",  # RX 6600/6600 XT/6650 XT
    "gfx1034": "10.3.0",  # RX 6500 XT/6400
    "gfx1035": "10.3.0",  # Radeon 680M/660M
    "gfx1036": "10.3.0",  # Ryzen 7000/9000 desktop iGPU
    "gfx1037": "10.3.0",  # Radeon 610M
    "gfx1103": "11.0.0",  # Radeon 780M/760M
}

# iGPUs that Ollama uses without OLLAMA_IGPU_ENABLE because they behave like a discrete GPU (Strix Halo).
DEFAULT_VISIBLE_IGPU_TARGETS = frozenset({"gfx1151"})

GFX_NAME_RE = re.compile(r"^gfx([0-9]{1,2})([0-9a-f])([0-9a-f])$")
OVERRIDE_RE = re.compile(r"^([0-9]+)\.([0-9]+)\.([0-9]+)$")


@dataclass(frozen=True, order=True)
class GfxVersion:
    """A gfx IP version: the three numbers behind `gfx1031`, `10.3.1` and KFD's `100301`."""

    major: int
    minor: int
    stepping: int

    @classmethod
    def from_kfd(cls, value: int) -> GfxVersion | None:
        """Decode KFD's `gfx_target_version` (major*10000 + minor*100 + stepping); 0 (CPU node) gives None."""
        if value < 0:
            raise ValueError(f"gfx_target_version must not be negative, got {value}")
        if value == 0:
            return None
        major, minor, stepping = value // 10000, (value // 100) % 100, value % 100
        if minor > 0xF or stepping > 0xF:
            raise ValueError(f"gfx_target_version {value}: minor and stepping must be at most 15")
        return cls(major, minor, stepping)

    @classmethod
    def from_name(cls, name: str) -> GfxVersion:
        """Parse a target name such as `gfx90a` or `gfx1100`."""
        match = GFX_NAME_RE.fullmatch(name)
        if match is None:
            raise ValueError(f"{name!r} is not a gfx target name like gfx1100 or gfx90a")
        return cls(int(match[1]), int(match[2], 16), int(match[3], 16))

    @classmethod
    def from_override(cls, text: str) -> GfxVersion:
        """Parse an HSA_OVERRIDE_GFX_VERSION value such as `10.3.0` (three decimal numbers)."""
        match = OVERRIDE_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not three decimal numbers like 10.3.0")
        version = cls(int(match[1]), int(match[2]), int(match[3]))
        if version.minor > 0xF or version.stepping > 0xF:
            raise ValueError(f"{text!r}: minor and stepping must be at most 15")
        return version

    @property
    def name(self) -> str:
        return f"gfx{self.major}{self.minor:x}{self.stepping:x}"

    @property
    def override(self) -> str:
        return f"{self.major}.{self.minor}.{self.stepping}"

    @property
    def kfd(self) -> int:
        return self.major * 10000 + self.minor * 100 + self.stepping


def is_supported(gfx: str) -> bool:
    """Whether Ollama v0.34.4's rocm_v7_2 build ships kernels for this target."""
    return gfx in ROCM_V7_2_TARGETS


def needed_override(gfx: str) -> str | None:
    """The HSA_OVERRIDE_GFX_VERSION an unsupported target needs; None when supported or when none works."""
    return None if is_supported(gfx) else OVERRIDES.get(gfx)


def effective_target(gfx: str) -> str | None:
    """The target whose kernels run on this GPU: its own, its override's, or None when it cannot run."""
    if is_supported(gfx):
        return gfx
    override = OVERRIDES.get(gfx)
    return GfxVersion.from_override(override).name if override else None


def override_fits(gfx: str, override: str) -> bool:
    """libhsakmt's rule: same major version as the GPU, minor and stepping no higher than its own."""
    real, over = GfxVersion.from_name(gfx), GfxVersion.from_override(override)
    return real.major == over.major and over.minor <= real.minor and over.stepping <= real.stepping
