"""pywheels.py, the PKGBUILD's helper for the private Python packages: real sdist trees built with setuptools,
each importable by the next build, then installed and pruned under a DESTDIR the way package() does it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ollama_airllm.pkggen import pywheels

HELPER = Path(pywheels.__file__)
PREFIX = "/usr/lib/ollama-airllm"
LICENSES = "/usr/share/licenses/ollama-airllm-rocm/python"
PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "1.0"
license = "MIT"
license-files = ["LICENSE"]
{extra}
"""


def sdist(root: Path, name: str, files: dict[str, str], extra: str = "", setup_py: str | None = None) -> Path:
    """A source tree like an unpacked sdist."""
    src = root / f"{name}-1.0"
    (src / name).mkdir(parents=True)
    (src / "pyproject.toml").write_text(PYPROJECT.format(name=name, extra=extra))
    (src / "LICENSE").write_text(f"{name} license\n")
    for rel, text in {f"{name}/__init__.py": "VALUE = 1\n", **files}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    if setup_py is not None:
        (src / "setup.py").write_text(setup_py)
    return src


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, HELPER, *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sdists")
    libs = ("cpu", "cuda121", "rocm72", "rocm63")
    return {
        "alpha": sdist(root, "alpha", {}, extra='[project.scripts]\nalpha-cli = "alpha:main"\n'),
        # beta's build imports alpha: it only works once alpha is installed into the scratch prefix.
        "beta": sdist(root, "beta", {}, setup_py="import alpha\nfrom setuptools import setup\nsetup()\n"),
        "bitsandbytes": sdist(
            root,
            "bitsandbytes",
            {**{f"bitsandbytes/libbitsandbytes_{lib}.so": lib for lib in libs}, "tests/__init__.py": ""},
            extra=textwrap.dedent("""\
                [tool.setuptools]
                packages = ["bitsandbytes", "tests"]
                [tool.setuptools.package-data]
                bitsandbytes = ["*.so"]
                """),
        ),
    }


@pytest.fixture(scope="module")
def built(trees, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("build")
    sources = (trees["alpha"], trees["beta"], trees["bitsandbytes"])  # in dependency order
    result = run("build", work / "wheels", work / "prefix", *sources)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


@pytest.mark.slow
def test_build_makes_wheels_in_order_each_importable_by_the_next(built):
    wheels = sorted(p.name for p in (built / "wheels").iterdir())
    assert wheels == [f"{n}-1.0-py3-none-any.whl" for n in ("alpha", "beta", "bitsandbytes")]
    site = Path(run("site", built / "prefix").stdout.strip())
    assert (site / "alpha" / "__init__.py").is_file() and (site / "beta" / "__init__.py").is_file()


@pytest.mark.slow
def test_install_prunes_and_collects_licenses(built, tmp_path):
    dest = tmp_path / "pkg"
    result = run("install", dest, PREFIX, LICENSES, *sorted((built / "wheels").glob("*.whl")))
    assert result.returncode == 0, result.stderr
    site = dest / run("site", PREFIX).stdout.strip().lstrip("/")
    assert (site / "alpha" / "__init__.py").is_file()
    assert sorted(p.name for p in (site / "bitsandbytes").glob("*.so")) == [
        "libbitsandbytes_cpu.so", "libbitsandbytes_rocm72.so",
    ]  # fmt: skip
    assert not (site / "tests").exists()  # no top-level `tests` package in the private site
    assert not (dest / PREFIX.lstrip("/") / "bin").exists()  # console scripts: the package has wrappers
    licenses = dest / LICENSES.lstrip("/")
    assert (licenses / "alpha-1.0.dist-info" / "LICENSE").read_text() == "alpha license\n"
    dists = [f"{name}-1.0.dist-info" for name in ("alpha", "beta", "bitsandbytes")]
    assert sorted(p.name for p in licenses.iterdir()) == dists


@pytest.mark.slow
def test_a_failed_build_is_one_line_naming_the_source(trees, tmp_path):
    result = run("build", tmp_path / "wheels", tmp_path / "prefix", trees["beta"])  # alpha not built first
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"pywheels.py build: building a wheel of {trees['beta']} failed (exit 1)"


def test_missing_source_or_wheel_is_a_usage_error(tmp_path):
    for args in (("build", tmp_path / "w", tmp_path / "p", tmp_path / "nope"),
                 ("install", tmp_path / "d", PREFIX, LICENSES, tmp_path / "x.whl")):  # fmt: skip
        result = run(*args)
        assert result.returncode == 2
        assert result.stderr == f"pywheels.py {args[0]}: {args[-1]}: no such file or directory\n"
    assert run("bogus").returncode == 2


def test_site_matches_the_interpreter_scheme():
    out = run("site", PREFIX)
    assert out.returncode == 0 and out.stdout == pywheels.site_dir(PREFIX) + "\n"
    assert out.stdout.startswith(f"{PREFIX}/lib/python3.")
