"""Render the package files for a profile: PKGBUILD, .SRCINFO, .install, units, env, sysusers and tmpfiles.

`render_package` returns every file the PKGBUILD's source=() names (with this project's own tree as one
reproducible tar archive); `write_package` writes them atomically into a directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .. import __version__
from ..errors import UserError
from ..profile import Profile, packaging_dir, profile_to_yaml
from . import sources
from .sourcetar import source_tar
from .srcinfo import srcinfo
from .templating import UnsafeValue, environment

PKGNAME = "ollama-airllm-rocm"
VARIANTS = ("full", "runner-only")
URL = "https://github.com/ollama/ollama"
# Ollama's version, then this project's: 0.34.4.oar0.1.0 (letters, digits and dots, as Arch's linux does
# with 6.x.y.arch1). vercmp orders it by Ollama's version first; pkgrel stays the packaging revision.
PKGVER = f"{sources.OLLAMA_VERSION}.oar{__version__}"

# Files rendered from packaging/templates/<name>.j2 that the PKGBUILD lists as local sources.
AUX_FILES = (
    "ollama.service",
    "ollama-airllm@.service",
    "ollama.sysusers",
    "ollama.tmpfiles",
    "ollama.env",
    "airllm-runner.in",
    "ollama-airllm.in",
)
PATCH = "airllm.patch"
STATE_DIR = "/var/lib/ollama"  # the unit's StateDirectory=
INSTALL = f"{PKGNAME}.install"
# The profile the package was rendered from, installed as /etc/ollama-airllm/profile.yaml for the doctor.
PROFILE = "profile.yaml"
BACKUP = ("etc/default/ollama", "etc/ollama-airllm/profile.yaml")
# This project's own tree, as the source archive TARBALL (unpacked to TARBALL_DIR).
TREE = ("pyproject.toml", "README.md", "runner", "packaging", "tests/pkg")
TARBALL_DIR = f"ollama-airllm-{__version__}"
TARBALL = f"{TARBALL_DIR}.tar"

# Arch package names from the official repositories (reference: arch-package-names.md).
_PY_RUNTIME = (
    "python", "python-click", "python-rich", "python-jinja", "python-yaml", "python-pydantic",
)  # fmt: skip
_PY_HEAVY = (
    "python-pytorch-rocm", "python-numpy", "python-safetensors", "python-huggingface-hub>=1:1.31.0",
    "python-fastapi", "uvicorn", "python-psutil", "python-json5", "python-pytest-testinfra", "python-scipy",
    "python-sentencepiece", "python-tqdm", "python-packaging", "python-regex", "python-requests",
    "python-filelock", "python-typer", "python-typing_extensions", "python-triton",
)  # fmt: skip
_FULL_DEPENDS = (
    "glibc",
    "libgcc",
    "libstdc++",
    "hip-runtime-amd",
    "hipblas",
    "rocblas",
    *_PY_RUNTIME,
    *_PY_HEAVY,
)
_FULL_MAKEDEPENDS = (
    "cmake", "ninja", "git", "go", "rocm-toolchain", "hipblas", "rust", "python-build", "python-installer",
    "python-wheel", "python-setuptools", "python-setuptools-scm", "python-poetry-core", "python-maturin",
    "python-scikit-build-core", "cython",
)  # fmt: skip
_RUNNER_ONLY_MAKEDEPENDS = ("python-build", "python-installer", "python-wheel", "python-setuptools")


class RenderError(UserError):
    """The package cannot be rendered (a missing file, or a value a template refused)."""


@dataclass(frozen=True)
class RenderedFile:
    data: bytes
    mode: int = 0o644

    @property
    def text(self) -> str:
        return self.data.decode()


@dataclass(frozen=True)
class _Source:
    entry: str
    sha256: str


def render_package(
    profile: Profile, variant: str = "full", root: Path | None = None
) -> dict[str, RenderedFile]:
    """All files of the package directory, by name. `root` is the project tree (default: the one holding
    packaging/)."""
    if variant not in VARIANTS:
        raise RenderError(f"variant {variant!r}: allowed: {', '.join(VARIANTS)}")
    pkg_dir = packaging_dir()
    root = root if root is not None else pkg_dir.parent
    env = environment(pkg_dir / "templates")
    full = variant == "full"
    ctx = _context(profile)
    files = {name: _text(_render(env, f"{name}.j2", ctx)) for name in AUX_FILES}
    for name in ("airllm-runner.in", "ollama-airllm.in"):
        files[name] = RenderedFile(files[name].data, 0o755)
    files[PROFILE] = _text(
        profile_to_yaml(
            profile,
            header="The hardware profile this package was rendered from (ollama-airllm doctor reads it).",
        )
    )
    files[PATCH] = RenderedFile(_read(root / PATCH))
    try:
        files[TARBALL] = RenderedFile(source_tar(root, TREE, TARBALL_DIR))
    except OSError as exc:
        raise RenderError(f"cannot read {exc.filename or root}: {exc.strerror or exc}") from None
    local = [TARBALL, PATCH, *AUX_FILES, PROFILE]
    srcs = _remote_sources() if full else []
    srcs += [_Source(name, hashlib.sha256(files[name].data).hexdigest()) for name in local]
    pkg = _package_fields(profile, variant, srcs)
    files["PKGBUILD"] = _text(_render(env, f"PKGBUILD.{variant}.j2", {**ctx, **pkg}))
    files[INSTALL] = _text(_render(env, "install.j2", ctx))
    fields = {key: pkg[key] for key in pkg if key not in ("sources", "template")}
    fields |= {"source": [s.entry for s in srcs], "sha256sums": [s.sha256 for s in srcs]}
    files[".SRCINFO"] = _text(srcinfo(PKGNAME, fields))
    return files


def _package_fields(profile: Profile, variant: str, srcs: list[_Source]) -> dict[str, object]:
    """The PKGBUILD's global variables (those .SRCINFO has), plus its sources and own template name."""
    full = variant == "full"
    return {
        "pkgdesc": _pkgdesc(profile, variant),
        "pkgver": PKGVER,
        "pkgrel": "1",
        "url": URL,
        "install": INSTALL,
        "arch": ["x86_64"] if full else ["any"],
        "license": ["MIT", "Apache-2.0"] if full else ["Apache-2.0"],
        "depends": list(_FULL_DEPENDS if full else _PY_RUNTIME),
        "makedepends": list(_FULL_MAKEDEPENDS if full else _RUNNER_ONLY_MAKEDEPENDS),
        "checkdepends": ["python-pytest", "python-hypothesis"] if full else [],
        "provides": [f"{name}={sources.OLLAMA_VERSION}" for name in ("ollama", "ollama-rocm") if full],
        "conflicts": ["ollama", "ollama-rocm"] if full else [],
        "options": ["!lto"] if full else [],
        "backup": list(BACKUP),
        "noextract": [p.filename for p in sources.PRIVATE_PYTHON if p.wheel] if full else [],
        "sources": srcs,
        "template": f"PKGBUILD.{variant}.j2",
    }


def _text(text: str) -> RenderedFile:
    return RenderedFile(text.encode())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RenderError(f"cannot read {path}: {exc.strerror or exc}") from None


def write_package(files: dict[str, RenderedFile], out_dir: Path, root: Path | None = None) -> Path:
    """Write `files` into `out_dir`, all or nothing.

    Everything is first written to a temporary directory: a new `out_dir` is that directory renamed; in an
    existing one each file is then renamed over its old version, after checking that none is in the way (a
    directory where a file belongs), so a failed render leaves it as it was. Files the package does not own
    stay. airllm.patch is not rewritten when `out_dir` is the project itself (rendering the committed files).
    """
    root = (root if root is not None else packaging_dir().parent).resolve()
    out_dir = out_dir.absolute()
    if out_dir.resolve() == root:
        files = {name: f for name, f in files.items() if name != PATCH}
    if out_dir.exists() and not out_dir.is_dir():
        raise RenderError(f"{out_dir} exists and is not a directory")
    fresh = not out_dir.exists()
    try:
        if fresh:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent if fresh else out_dir))
    except OSError as exc:
        raise RenderError(f"cannot write the package into {out_dir}: {exc.strerror or exc}") from None
    try:
        for name, rendered in files.items():
            (staging / name).write_bytes(rendered.data)
            (staging / name).chmod(rendered.mode)
        if fresh:
            staging.chmod(0o755)
            staging.rename(out_dir)
        else:
            _check_replaceable(out_dir, files)
            for name in files:
                os.replace(staging / name, out_dir / name)
    except OSError as exc:
        raise RenderError(f"cannot write the package into {out_dir}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _check_replaceable(out_dir: Path, names: dict[str, RenderedFile]) -> None:
    """Refuse before the first rename if a directory stands where the package has a file."""
    for name in names:
        old = out_dir / name
        if old.is_dir() and not old.is_symlink():
            raise RenderError(
                f"{old} is a directory where the package has a file; move it away and render again"
            )


def _render(env: jinja2.Environment, template: str, ctx: dict[str, object]) -> str:
    try:
        return env.get_template(template).render(ctx)
    except UnsafeValue as exc:
        raise RenderError(f"{template}: {exc}") from None
    except jinja2.TemplateNotFound:
        raise RenderError(f"template {template} not found in {packaging_dir() / 'templates'}") from None


def _context(profile: Profile) -> dict[str, object]:
    by_name = {p.name: p for p in sources.PRIVATE_PYTHON}
    return {
        "profile": profile,
        "pins": profile.pins,
        "ollama_version": sources.OLLAMA_VERSION,
        "tarball_dir": TARBALL_DIR,
        "targets_text": ", ".join(profile.amdgpu_targets),
        "python_by_name": by_name,
        "private_sdists": [p for p in sources.PRIVATE_PYTHON if not p.wheel],
        "igpu": any(gpu.integrated for gpu in profile.visible_gpus),
        "state_subdirs": _state_subdirs(profile),
        "external_dirs": _external_dirs(profile),
        "home_dirs": [path for path in _external_dirs(profile) if path.startswith("/home/")],
    }


def _data_dirs(profile: Profile) -> list[str]:
    """The models and cache directories, each once."""
    return list(dict.fromkeys((profile.ollama.models_dir, profile.airllm.cache_dir)))


def _state_subdirs(profile: Profile) -> list[str]:
    """Data directories below /var/lib/ollama: the package's own, so tmpfiles.d creates and owns them."""
    return [path for path in _data_dirs(profile) if path.startswith(f"{STATE_DIR}/")]


def _external_dirs(profile: Profile) -> list[str]:
    """Data directories outside /var/lib/ollama: made writable for the service, created only when missing."""
    own = {STATE_DIR, *_state_subdirs(profile)}
    return [path for path in _data_dirs(profile) if path not in own]


def _pkgdesc(profile: Profile, variant: str) -> str:
    if variant != "full":
        return "Ollama AirLLM runner, units and package generator (CI variant: Ollama/HIP not built)"
    return (
        f"Ollama {sources.OLLAMA_VERSION} with ROCm for {', '.join(profile.amdgpu_targets)} "
        "and an AirLLM layer-streaming runner for models larger than VRAM"
    )


def _remote_sources() -> list[_Source]:
    out = [
        _Source(f"ollama::git+https://github.com/ollama/ollama.git#commit={sources.OLLAMA_COMMIT}", "SKIP"),
        _Source(
            f"llama.cpp::git+https://github.com/ggml-org/llama.cpp.git#tag={sources.LLAMA_CPP_TAG}", "SKIP"
        ),
    ]
    out += [_Source(p.url, p.sha256) for p in sources.PRIVATE_PYTHON]
    return out
