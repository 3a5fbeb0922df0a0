"""Render the package files for a profile: PKGBUILD, .SRCINFO, .install, units, env, sysusers and tmpfiles.

`render_package` returns the files as text; `write_package` writes them atomically into a directory together
with this project's own tree (runner/, packaging/, ...), which the PKGBUILD's prepare() copies from beside it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .. import __version__
from ..errors import UserError
from ..profile import Profile, packaging_dir, profile_to_yaml
from . import sources
from .srcinfo import srcinfo
from .templating import UnsafeValue, environment

PKGNAME = "ollama-airllm-rocm"
VARIANTS = ("full", "runner-only")

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
# This project's files the PKGBUILD's prepare() copies from the directory that holds it.
TREE = ("pyproject.toml", "README.md", "runner", "packaging", "tests/pkg")
_TREE_SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", ".pytest_cache", ".hypothesis")

# Arch package names from the official repositories (reference: arch-package-names.md).
_PY_RUNTIME = (
    "python", "python-click", "python-rich", "python-jinja", "python-yaml", "python-pydantic",
)  # fmt: skip
_PY_HEAVY = (
    "python-pytorch-rocm", "python-numpy", "python-safetensors", "python-huggingface-hub>=1:1.31.0",
    "python-fastapi", "uvicorn", "python-psutil", "python-pytest-testinfra", "python-scipy",
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
    text: str
    mode: int = 0o644


@dataclass(frozen=True)
class _Source:
    entry: str
    sha256: str


def render_package(
    profile: Profile, variant: str = "full", root: Path | None = None
) -> dict[str, RenderedFile]:
    """All generated files, by name. `root` is the project tree (default: the one holding packaging/)."""
    if variant not in VARIANTS:
        raise RenderError(f"variant {variant!r}: allowed: {', '.join(VARIANTS)}")
    pkg_dir = packaging_dir()
    root = root if root is not None else pkg_dir.parent
    env = environment(pkg_dir / "templates")
    full = variant == "full"
    ctx = _context(profile, variant)
    files = {name: RenderedFile(_render(env, f"{name}.j2", ctx)) for name in AUX_FILES}
    files[PROFILE] = RenderedFile(
        profile_to_yaml(
            profile,
            header="The hardware profile this package was rendered from (ollama-airllm doctor reads it).",
        )
    )

    texts = {name: f.text.encode() for name, f in files.items()}
    patch = root / PATCH
    try:
        texts[PATCH] = patch.read_bytes()
    except OSError as exc:
        raise RenderError(f"cannot read {patch}: {exc.strerror or exc}") from None
    local = [PATCH, *AUX_FILES, PROFILE]
    srcs = _remote_sources() if full else []
    srcs += [_Source(name, hashlib.sha256(texts[name]).hexdigest()) for name in local]
    noextract = [p.filename for p in sources.PRIVATE_PYTHON if p.wheel] if full else []
    pkg = {
        "pkgdesc": _pkgdesc(profile, variant),
        "license": ["MIT", "Apache-2.0"] if full else ["Apache-2.0"],
        "depends": list(_FULL_DEPENDS if full else _PY_RUNTIME),
        "makedepends": list(_FULL_MAKEDEPENDS if full else _RUNNER_ONLY_MAKEDEPENDS),
        "checkdepends": ["python-pytest", "python-hypothesis"] if full else [],
        "provides": [f"ollama={sources.OLLAMA_VERSION}", f"ollama-rocm={sources.OLLAMA_VERSION}"]
        if full
        else [],
        "conflicts": ["ollama", "ollama-rocm"] if full else [],
        "options": ["!lto"] if full else [],
        "sources": srcs,
        "backup": list(BACKUP),
        "noextract": noextract,
    }
    pkgbuild = _render(env, "PKGBUILD.j2", {**ctx, **pkg})
    files["PKGBUILD"] = RenderedFile(pkgbuild)
    files[INSTALL] = RenderedFile(_render(env, "install.j2", ctx))
    files[".SRCINFO"] = RenderedFile(
        srcinfo(
            PKGNAME,
            {
                "pkgdesc": pkg["pkgdesc"],
                "pkgver": ctx["pkgver"],
                "pkgrel": "1",
                "url": "https://github.com/ollama/ollama",
                "install": INSTALL,
                "arch": ["x86_64"] if full else ["any"],
                "license": pkg["license"],
                "checkdepends": pkg["checkdepends"],
                "makedepends": pkg["makedepends"],
                "depends": pkg["depends"],
                "provides": pkg["provides"],
                "conflicts": pkg["conflicts"],
                "noextract": noextract,
                "options": pkg["options"],
                "backup": list(BACKUP),
                "source": [s.entry for s in srcs],
                "sha256sums": [s.sha256 for s in srcs],
            },
        )
    )
    for name in ("airllm-runner.in", "ollama-airllm.in"):
        files[name] = RenderedFile(files[name].text, 0o755)
    return files


def write_package(files: dict[str, RenderedFile], out_dir: Path, root: Path | None = None) -> Path:
    """Write `files` and this project's tree into `out_dir`, all or nothing.

    Everything is first written to a temporary directory: a new `out_dir` is that directory renamed; in an
    existing one each entry is then renamed over its old version, after checking that none of them can
    fail (a directory where a file belongs, or the reverse), so a failed render leaves it as it was.
    Files the package does not own stay. The project tree is not copied when `out_dir` is the project
    itself (rendering the committed top-level files).
    """
    root = (root if root is not None else packaging_dir().parent).resolve()
    out_dir = out_dir.absolute()
    tree = [] if out_dir.resolve() == root or not (root / "pyproject.toml").is_file() else list(TREE)
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
        entries = _stage(staging, files, root, tree)
        if fresh:
            staging.chmod(0o755)
            staging.rename(out_dir)
        else:
            _check_replaceable(staging, out_dir, entries)
            for rel in entries:
                _swap_in(staging / rel, out_dir / rel, staging)
    except OSError as exc:
        raise RenderError(f"cannot write the package into {out_dir}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _stage(staging: Path, files: dict[str, RenderedFile], root: Path, tree: list[str]) -> list[str]:
    """Write the package into the empty directory `staging`; return the entries written (relative paths)."""
    for name, rendered in files.items():
        _write(staging / name, rendered.text.encode(), rendered.mode)
    entries = list(files)
    if tree:
        _write(staging / PATCH, (root / PATCH).read_bytes(), 0o644)
        entries.append(PATCH)
    for rel in tree:
        src, dst = root / rel, staging / rel
        if src.is_dir():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst, ignore=_TREE_SKIP, symlinks=True)
        elif src.exists():
            _write(dst, src.read_bytes(), stat.S_IMODE(src.stat().st_mode))
        else:
            continue
        entries.append(rel)
    return entries


def _check_replaceable(staging: Path, out_dir: Path, entries: list[str]) -> None:
    """Refuse before the first rename if an entry of `out_dir` has the other kind (file or directory)."""
    for rel in entries:
        new, old = staging / rel, out_dir / rel
        if not (old.exists() or old.is_symlink()):
            continue
        if new.is_dir() != (old.is_dir() and not old.is_symlink()):
            has, needs = ("a file", "a directory") if new.is_dir() else ("a directory", "a file")
            raise RenderError(f"{old} is {has} where the package has {needs}; move it away and render again")


def _swap_in(new: Path, old: Path, staging: Path) -> None:
    """Rename `new` over `old` (a directory is first moved aside into `staging`, removed with it)."""
    old.parent.mkdir(parents=True, exist_ok=True)
    if new.is_dir() and old.is_dir():
        old.rename(Path(tempfile.mkdtemp(prefix=".old.", dir=staging)) / "old")
    os.replace(new, old)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _render(env: jinja2.Environment, template: str, ctx: dict[str, object]) -> str:
    try:
        return env.get_template(template).render(ctx)
    except UnsafeValue as exc:
        raise RenderError(f"{template}: {exc}") from None
    except jinja2.TemplateNotFound:
        raise RenderError(f"template {template} not found in {packaging_dir() / 'templates'}") from None


def _context(profile: Profile, variant: str) -> dict[str, object]:
    by_name = {p.name: p for p in sources.PRIVATE_PYTHON}
    return {
        "profile": profile,
        "pins": profile.pins,
        "variant": variant,
        "full": variant == "full",
        "pkgver": sources.OLLAMA_VERSION,
        "oar_version": __version__,
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
