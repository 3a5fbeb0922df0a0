"""The hardware profile: a strict, validated YAML description of the GPUs and settings the package is for.

Every string that can reach a shell script, a systemd unit or an environment file is limited to a safe pattern
here, before any renderer quotes it. Errors name the key path, the bad value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from .atomicfile import write_atomic
from .errors import UsageError, UserError
from .hardware.gfx import (
    GFX_NAME_RE,
    ROCM_V7_2_TARGETS,
    GfxVersion,
    effective_target,
    is_supported,
    override_fits,
)

PACKAGING_DIR_ENV = "OLLAMA_AIRLLM_PACKAGING_DIR"
SYSTEM_PACKAGING_DIR = Path("/usr/share/ollama-airllm/packaging")
DEFAULT_PROFILE_NAME = "rx7900xtx"


class Allowed(ValueError):
    """A field check failed; the message says what is allowed."""


class Problem(ValueError):
    """A check across fields failed at `path` (relative to the model that raised it)."""

    def __init__(self, path: tuple[str | int, ...], got: Any, allowed: str) -> None:
        super().__init__(allowed)
        self.path, self.got, self.allowed = path, got, allowed


class Problems(ValueError):
    """Several cross-field problems found in one model."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.allowed for p in problems))
        self.problems = problems


# --- safe string types -------------------------------------------------------------------------------------

_PROFILE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_GPU_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9 ._+/()-]{0,78}[A-Za-z0-9._+/()-])?$")
_PCI_ID_RE = re.compile(r"^0x[0-9a-f]{4}$")
_PCI_SLOT_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_PATH_RE = re.compile(r"^(/[A-Za-z0-9._+-]+)+/?$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_HOST_PORT_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")
_KEEP_ALIVE_RE = re.compile(r"^(-1|0|[1-9][0-9]{0,8}|(?=[0-9])([0-9]+h)?([0-9]+m)?([0-9]+s)?)$")


def _matcher(pattern: re.Pattern[str], allowed: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise Allowed(allowed)
        return value

    return AfterValidator(check)


# The service gets write access to its data directories (ReadWritePaths=) and creates the missing leaf: only
# directories dedicated to Ollama, never a system directory, a whole mount point or a whole home directory.
# (prefix, placeholders for the parts a dedicated directory needs below the prefix)
_DATA_ROOTS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("var", "lib", "ollama"), ()),
    (("srv",), ("ollama",)),
    (("mnt",), ("DISK", "ollama")),
    (("media",), ("DISK", "ollama")),
    (("run", "media"), ("USER", "DISK", "ollama")),
    (("home",), ("USER", "ollama")),
)
DATA_DIRS_ALLOWED = (
    "a directory dedicated to Ollama: /var/lib/ollama or below it, /srv/NAME/..., /mnt/DISK/DIR/..., "
    "/media/DISK/DIR/..., /run/media/USER/DISK/DIR/... or /home/USER/DIR/... (an absolute path of letters, "
    "digits and . _ + -; no spaces, quotes, $, %, `, ; and no '.', '..' or hidden '.name' parts)"
)


def _data_dir_refusal(value: str) -> str | None:
    """Why `value` cannot be a data directory of the service, or None when it can."""
    if not _PATH_RE.fullmatch(value):
        return "it is not an absolute path of the allowed characters"
    parts = tuple(value.strip("/").split("/"))
    hidden = next((part for part in parts if part.startswith(".")), None)
    if hidden is not None:
        return f"{hidden!r} is a hidden or relative path part"
    shown = "/" + "/".join(parts)
    for prefix, needed in _DATA_ROOTS:
        if parts[: len(prefix)] == prefix[: len(parts)]:
            if len(parts) >= len(prefix) + len(needed):
                return None
            example = "/" + "/".join((*parts, *(*prefix, *needed)[len(parts) :]))
            return f"{shown} is shared (a system directory, a mount point or a home), use e.g. {example}"
    return f"{shown} is outside those places (system directories such as /var/lib, /opt or /root are refused)"


def check_data_dir(value: str) -> str:
    """A models or cache directory: one of the dedicated places, without a trailing slash; else Allowed."""
    reason = _data_dir_refusal(value)
    if reason is not None:
        raise Allowed(f"{DATA_DIRS_ALLOWED}; refused because {reason}")
    return value.rstrip("/")


def _check_host(value: str) -> str:
    allowed = "host:port, e.g. 127.0.0.1:11434, 0.0.0.0:11434, [::1]:11434 or localhost:11434 (port 1-65535)"
    match = _HOST_PORT_RE.fullmatch(value)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise Allowed(allowed)
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise Allowed(allowed) from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise Allowed(allowed) from None
    elif not _HOSTNAME_RE.fullmatch(host):
        raise Allowed(allowed)
    return value


def _check_gfx_target(value: str) -> str:
    if not GFX_NAME_RE.fullmatch(value) or value not in ROCM_V7_2_TARGETS:
        raise Allowed(f"a target of Ollama's rocm_v7_2 build: {', '.join(ROCM_V7_2_TARGETS)}")
    return value


def _check_override(value: str) -> str:
    allowed = (
        "null or three decimal numbers like 10.3.0 (^\\d+\\.\\d+\\.\\d+$, minor and stepping at most 15)"
    )
    try:
        GfxVersion.from_override(value)
    except ValueError:
        raise Allowed(allowed) from None
    return value


def _keep_alive_to_str(value: Any) -> Any:
    """YAML reads `keep_alive: 0` and `-1` as integers; keep them as Ollama's strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _exact_int(value: Any) -> Any:
    """`schema_version: true` or `1.0` is not the integer 1 (Literal[1] alone accepts both)."""
    if type(value) is not int:
        raise Allowed("1 (the integer; this release reads schema version 1)")
    return value


def _unique(values: list[Any]) -> list[Any]:
    if len(set(values)) != len(values):
        raise Allowed("a list without repeated entries")
    return values


ProfileName = Annotated[
    str, _matcher(_PROFILE_NAME_RE, "1-64 of a-z 0-9 . _ -, starting with a letter or digit")
]
GpuName = Annotated[
    str,
    _matcher(
        _GPU_NAME_RE,
        "1-80 of letters, digits, spaces and . _ + / ( ) -, starting with a letter or digit, no end space",
    ),
]
GfxName = Annotated[
    str,
    _matcher(
        GFX_NAME_RE, "a gfx target name: gfx + major (decimal) + minor and stepping (hex), e.g. gfx1100"
    ),
]
GfxTarget = Annotated[str, AfterValidator(_check_gfx_target)]
PciDeviceId = Annotated[str, _matcher(_PCI_ID_RE, "0x and 4 lowercase hex digits, e.g. 0x744c")]
PciSlot = Annotated[str, _matcher(_PCI_SLOT_RE, "a PCI address like 0000:03:00.0 (lowercase hex)")]
DataDir = Annotated[str, AfterValidator(check_data_dir)]
HostPort = Annotated[str, AfterValidator(_check_host)]
HsaOverride = Annotated[str, AfterValidator(_check_override)]
KeepAlive = Annotated[
    str,
    BeforeValidator(_keep_alive_to_str),
    _matcher(
        _KEEP_ALIVE_RE, "-1 (forever), 0 (unload at once), seconds, or a duration like 30s, 5m, 1h, 1h30m"
    ),
]


# --- the schema ---------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)


class SystemInfo(_Strict):
    """What detect saw besides GPUs (informational; used for guidance, not for the build)."""

    ram_bytes: int | None = Field(default=None, ge=0)
    models_disk_free_bytes: int | None = Field(default=None, ge=0)


class GPU(_Strict):
    """One AMD GPU as detect found it. `index` is its ROCm ordinal (position among KFD GPU nodes)."""

    index: int = Field(ge=0, le=63)
    name: GpuName
    gfx: GfxName
    pci_device_id: PciDeviceId
    pci_slot: PciSlot | None = None
    render_minor: int | None = Field(default=None, ge=128, le=1023)
    kfd_node: int | None = Field(default=None, ge=0, le=1023)
    vram_total_bytes: int = Field(ge=0)
    integrated: bool = False
    supported: bool

    @model_validator(mode="after")
    def _supported_matches_gfx(self) -> GPU:
        if self.supported != is_supported(self.gfx):
            raise Problems(
                [
                    Problem(
                        ("supported",),
                        self.supported,
                        f"{str(is_supported(self.gfx)).lower()} for {self.gfx}",
                    )
                ]
            )
        return self


class OllamaSettings(_Strict):
    """Settings written to /etc/default/ollama for `ollama serve`."""

    host: HostPort = "127.0.0.1:11434"
    models_dir: DataDir = "/var/lib/ollama"
    context_length: int = Field(default=32768, ge=256, le=1048576)  # agents: OpenClaw refuses < 16k
    flash_attention: bool = True
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    keep_alive: KeepAlive = "5m"
    num_parallel: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _quantized_cache_needs_flash_attention(self) -> OllamaSettings:
        if self.kv_cache_type != "f16" and not self.flash_attention:
            raise Problems(
                [Problem(("kv_cache_type",), self.kv_cache_type, "f16 unless flash_attention is true")]
            )
        return self


class AirLLMSettings(_Strict):
    """The layer-streaming runner used when a model does not fit in VRAM."""

    enabled: bool = True
    force: bool = False
    compression: Literal["none", "8bit", "4bit"] = "none"
    cache_dir: DataDir = "/var/lib/ollama/airllm"
    vram_reserve_mib: int = Field(default=1024, ge=0, le=1048576)
    # When the runner takes over a model beyond usable VRAM (README, "The Ollama patch"): auto = when the
    # planner estimates it faster for the workload below, or the model exceeds RAM + VRAM; over-vram = always.
    takeover: Literal["auto", "over-vram", "never"] = "auto"
    # The workload the auto policy times: new prompt tokens per request, then output tokens.
    workload_prompt_tokens: int = Field(default=4096, ge=1, le=16777216)
    workload_output_tokens: int = Field(default=512, ge=1, le=16777216)

    @model_validator(mode="after")
    def _force_needs_enabled(self) -> AirLLMSettings:
        if self.force and not self.enabled:
            raise Problems([Problem(("force",), self.force, "false unless enabled is true")])
        return self


class Pins(_Strict):
    """Upstream versions the package is built from; fixed by this release of the package."""

    ollama: Literal["0.34.4"] = "0.34.4"
    llama_cpp: Literal["b11081"] = "b11081"
    airllm: Literal["4.0.0"] = "4.0.0"


class Profile(_Strict):
    """A validated hardware profile (see README "Profile reference")."""

    schema_version: Annotated[Literal[1], BeforeValidator(_exact_int)]
    name: ProfileName
    system: SystemInfo = Field(default_factory=SystemInfo)
    gpus: list[GPU] = Field(min_length=1, max_length=64)
    amdgpu_targets: Annotated[list[GfxTarget], AfterValidator(_unique)] = Field(min_length=1)
    hsa_override_gfx_version: HsaOverride | None = None
    visible_devices: Annotated[list[Annotated[int, Field(ge=0)]], AfterValidator(_unique)] = Field(
        min_length=1
    )
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    airllm: AirLLMSettings = Field(default_factory=AirLLMSettings)
    pins: Pins = Field(default_factory=Pins)

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        problems = _gpu_problems(self)
        if problems:
            raise Problems(problems)
        return self

    @property
    def hsa_override(self) -> str | None:
        """HSA_OVERRIDE_GFX_VERSION for all visible GPUs, or None."""
        return self.hsa_override_gfx_version

    @property
    def visible_gpus(self) -> list[GPU]:
        """The GPUs Ollama may use, in visible_devices order."""
        by_index = {gpu.index: gpu for gpu in self.gpus}
        return [by_index[i] for i in self.visible_devices]

    @property
    def rocr_visible_devices(self) -> str:
        """ROCR_VISIBLE_DEVICES value, e.g. "0,1"."""
        return ",".join(str(i) for i in self.visible_devices)

    @property
    def amdgpu_targets_str(self) -> str:
        """AMDGPU_TARGETS for CMake, e.g. "gfx1100;gfx1101"."""
        return ";".join(self.amdgpu_targets)


def _gpu_problems(profile: Profile) -> list[Problem]:
    """Checks that tie GPUs, visible devices, the HSA override and the build targets together."""
    problems: list[Problem] = []
    indexes = [gpu.index for gpu in profile.gpus]
    for pos, gpu in enumerate(profile.gpus):
        if indexes.count(gpu.index) > 1:
            problems.append(Problem(("gpus", pos, "index"), gpu.index, "an index no other GPU uses"))
    by_index = {gpu.index: gpu for gpu in profile.gpus}
    known = ", ".join(str(i) for i in sorted(by_index))
    override = profile.hsa_override_gfx_version
    override_target = GfxVersion.from_override(override).name if override else None
    if override_target is not None and override_target not in ROCM_V7_2_TARGETS:
        problems.append(
            Problem(
                ("hsa_override_gfx_version",),
                override,
                "null or the version of a rocm_v7_2 target, e.g. 10.3.0 (gfx1030) or 11.0.0 (gfx1100); "
                f"{override} means {override_target}, which the build has no kernels for",
            )
        )
        return problems
    needed: list[str] = []
    for pos, index in enumerate(profile.visible_devices):
        gpu = by_index.get(index)
        if gpu is None:
            problems.append(Problem(("visible_devices", pos), index, f"an index listed in gpus ({known})"))
            continue
        runs = _runs_as(gpu, override, override_target)
        if runs is None:
            problems.append(
                Problem(("visible_devices", pos), index, _why_not_runnable(gpu, override, override_target))
            )
        elif runs not in needed:
            needed.append(runs)
    visible = [by_index[i] for i in profile.visible_devices if i in by_index]
    if override is not None and visible and all(gpu.supported for gpu in visible):
        problems.append(
            Problem(("hsa_override_gfx_version",), override, "null: every visible GPU is natively supported")
        )
    missing = [t for t in needed if t not in profile.amdgpu_targets]
    if missing:
        problems.append(
            Problem(
                ("amdgpu_targets",),
                profile.amdgpu_targets,
                f"a list that includes {', '.join(missing)} (the kernels the visible GPUs run)",
            )
        )
    return problems


def _runs_as(gpu: GPU, override: str | None, override_target: str | None) -> str | None:
    """The build target whose kernels this GPU runs under the profile's override, or None if it cannot run."""
    if override is None:
        return gpu.gfx if gpu.supported else None
    if gpu.gfx == override_target:
        return gpu.gfx
    if not gpu.supported and override_fits(gpu.gfx, override):
        return override_target
    return None


def _why_not_runnable(gpu: GPU, override: str | None, override_target: str | None) -> str:
    fix = effective_target(gpu.gfx)
    if override is None:
        if fix is None:
            return f"a GPU the rocm_v7_2 build runs; gpus index {gpu.index} is {gpu.gfx} (no kernels there)"
        hint = GfxVersion.from_name(fix).override
        return f"a supported GPU; gpus index {gpu.index} is {gpu.gfx}: set hsa_override_gfx_version: {hint}"
    if gpu.supported:
        return (
            f"GPUs that hsa_override_gfx_version {override} ({override_target}) fits; "
            f"gpus index {gpu.index} is natively supported {gpu.gfx}, not to run {override_target} kernels"
        )
    return (
        f"GPUs that hsa_override_gfx_version {override} fits (same major, minor/stepping not higher); "
        f"gpus index {gpu.index} is {gpu.gfx}"
    )


# --- error messages -----------------------------------------------------------------------------------------


def _path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Profile
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = _find_model(field.annotation)
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None


def format_errors(error: ValidationError) -> list[str]:
    """One line per problem: `path.to.key: got 'X'; allowed: ...`."""
    lines = []
    for err in error.errors():
        loc, kind, got = tuple(err["loc"]), err["type"], err.get("input")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Problems):
            lines += [
                f"{_path(loc + p.path)}: got {_show(p.got)}; allowed: {p.allowed}" for p in cause.problems
            ]
        elif kind == "missing":
            lines.append(f"{_path(loc)}: missing; allowed: this key is required")
        elif kind == "extra_forbidden":
            model = _model_at(loc[:-1])
            keys = ", ".join(model.model_fields) if model else "see the profile reference"
            lines.append(f"{_path(loc)}: got unknown key {loc[-1]!r}; allowed keys: {keys}")
        elif isinstance(cause, Allowed):
            lines.append(f"{_path(loc)}: got {_show(got)}; allowed: {cause}")
        else:
            allowed = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
            if kind == "string_type":
                allowed = "a string (quote it in YAML)"
            if kind in {"model_type", "dict_type"}:
                allowed = "a mapping of keys to values"
            lines.append(f"{_path(loc)}: got {_show(got)}; allowed: {allowed}")
    return lines


def validate_profile(data: Any, source: str = "profile") -> Profile:
    """Validate parsed YAML data; raise UsageError listing every problem."""
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  - {line}" for line in format_errors(exc))
        raise UsageError(f"invalid profile {source}:\n{problems}") from None


# --- files --------------------------------------------------------------------------------------------------


MAX_PROFILE_BYTES = 256 * 1024
MAX_YAML_DEPTH = 16


class _ProfileLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers, so `pci_slot: 0000:03:00.0` stays a string.

    A profile is a small tree of plain values, so anchors and aliases (the alias bomb), tags, merge keys,
    duplicate keys and nesting deeper than MAX_YAML_DEPTH are refused where they appear.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _refused("anchors and aliases (&name, *name) are not allowed in a profile", event)
        if getattr(event, "tag", None) is not None:
            raise _refused(f"tags ({event.tag}) are not allowed in a profile; write plain values", event)
        if self._depth >= MAX_YAML_DEPTH:
            raise _refused(f"nested deeper than {MAX_YAML_DEPTH} levels (a profile needs 4)", event)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _refused("merge keys (<<) are not allowed in a profile", key_node)
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise _refused("a key must be a plain value, not a list or mapping", key_node) from None
            if duplicate:
                raise _refused(f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a profile must not use."""


def _refused(problem: str, where: yaml.Event | yaml.Node) -> _Refused:
    return _Refused(problem=problem, problem_mark=where.start_mark)


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_ProfileLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in {_INT, _FLOAT}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ProfileLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_ProfileLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9_]+(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and validate a profile YAML file."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_PROFILE_BYTES + 1)
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"profile {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"profile {path}: is a directory, not a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"profile {path}: cannot read it ({exc})") from None
    return profile_from_yaml(text, str(path))


def profile_from_yaml(text: str, source: str = "profile") -> Profile:
    """Parse and validate profile YAML text; `source` names it in error messages."""
    if len(text) > MAX_PROFILE_BYTES:
        limit = MAX_PROFILE_BYTES // 1024
        raise UsageError(f"profile {source}: larger than {limit} KiB; a profile is a few KiB")
    try:
        data = yaml.load(text, Loader=_ProfileLoader)  # a SafeLoader: builds only plain YAML types
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = " ".join(" ".join(filter(None, (exc.context, exc.problem))).split())
        kind = "" if isinstance(exc, _Refused) else "not valid YAML: "
        raise UsageError(f"profile {source}: {where}{kind}{what}") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer with too many digits
        raise UsageError(f"profile {source}: not valid YAML ({' '.join(str(exc).split())})") from None
    return validate_profile(data, source)


class _ProfileDumper(yaml.SafeDumper):
    """Block style for mappings, flow style for short lists of scalars (`amdgpu_targets: [gfx1100]`)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(item, dict | list) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ProfileDumper.add_representer(list, _represent_list)


def profile_to_yaml(profile: Profile, header: str | None = None) -> str:
    """The profile as YAML text (field order as in the schema), with optional `#` comment lines first."""
    body = yaml.dump(
        profile.model_dump(mode="json"), Dumper=_ProfileDumper, sort_keys=False, allow_unicode=False
    )
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) if header else ""
    return comment + body


def dump_profile(profile: Profile, path: str | os.PathLike[str], header: str | None = None) -> None:
    """Write the profile atomically: a temp file in the same directory, then rename over `path`."""
    path = Path(path)
    try:
        write_atomic(path, profile_to_yaml(profile, header).encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write profile {path}: {exc.strerror or exc}") from None


def packaging_dir() -> Path:
    """The `packaging/` directory: $OLLAMA_AIRLLM_PACKAGING_DIR, the source tree, or the installed copy."""
    env = os.environ.get(PACKAGING_DIR_ENV)
    if env:
        if not Path(env).is_dir():
            raise UserError(f"{PACKAGING_DIR_ENV}={env!r} is not a directory")
        return Path(env)
    candidates = [Path(__file__).resolve().parents[2] / "packaging", SYSTEM_PACKAGING_DIR]
    for candidate in candidates:
        if (candidate / "profiles").is_dir():
            return candidate
    raise UserError(
        "cannot find the packaging directory; looked in "
        + ", ".join(str(c) for c in candidates)
        + f"; set {PACKAGING_DIR_ENV}"
    )


def default_profile_path() -> Path:
    """The built-in reference profile (one RX 7900 XTX)."""
    return packaging_dir() / "profiles" / f"{DEFAULT_PROFILE_NAME}.yaml"
