"""Build and install the package's private Python packages (the PKGBUILD runs this file with python3).

    python3 pywheels.py build WHEELS PREFIX SRCDIR...     wheels of SRCDIR... (in that order) into WHEELS;
                                                        each is installed into the scratch PREFIX, which the
                                                        next builds import from
    python3 pywheels.py site PREFIX                     the site-packages directory of PREFIX
    python3 pywheels.py install DESTDIR PREFIX LICENSES WHEEL...
                                                        install WHEEL... under DESTDIR/PREFIX, prune them and
                                                        copy their license files to DESTDIR/LICENSES/<dist>/

Standard library only: it runs before anything of this project is installed. Exit status: 0 done, 1 a build
or an install failed (its own output says why), 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

# Native libraries kept from a wheel that ships one per CUDA/ROCm release: the CPU one and ROCm 7.2's.
KEEP_NATIVE = {"bitsandbytes": ("libbitsandbytes_cpu.so", "libbitsandbytes_rocm72.so")}
# Top-level names no private package may add to site-packages (airllm's wheel ships its tests as `tests`).
DROP_TOPLEVEL = ("tests",)


class StepFailed(Exception):
    """A build or install command failed."""


def site_dir(prefix: str) -> str:
    """site-packages of `prefix` for this interpreter, as `python -m installer --prefix` lays it out."""
    return sysconfig.get_path("purelib", vars={"base": prefix, "platbase": prefix})


def _run(what: str, *args: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run([sys.executable, "-m", *args], env=env, check=False)
    if result.returncode != 0:
        raise StepFailed(f"{what} failed (exit {result.returncode})")


def build(wheels: Path, prefix: Path, srcdirs: list[Path]) -> list[Path]:
    """Build a wheel of each source directory in order; return the wheels."""
    for path in (wheels, prefix):
        shutil.rmtree(path, ignore_errors=True)
    wheels.mkdir(parents=True)
    site = site_dir(str(prefix))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (site, os.environ.get("PYTHONPATH"))))}
    built: list[Path] = []
    for src in srcdirs:
        with tempfile.TemporaryDirectory(dir=wheels) as tmp:
            args = ("build", "--wheel", "--no-isolation", "--outdir", tmp, str(src))
            _run(f"building a wheel of {src}", *args, env=env)
            for whl in sorted(Path(tmp).glob("*.whl")):
                built.append(whl.rename(wheels / whl.name))
                _run(f"installing {whl.name}", "installer", f"--prefix={prefix}", str(built[-1]))
    return built


def install(destdir: Path, prefix: str, licenses: str, wheels: list[Path]) -> Path:
    """Install `wheels` under destdir/prefix, then prune them; return the site-packages directory."""
    for whl in wheels:
        _run(f"installing {whl.name}", "installer", f"--destdir={destdir}", f"--prefix={prefix}", str(whl))
    site = destdir / site_dir(prefix).lstrip("/")
    _prune(destdir / prefix.lstrip("/"), site)
    for dist in sorted(site.glob("*.dist-info")):
        if (dist / "licenses").is_dir():
            shutil.copytree(dist / "licenses", destdir / licenses.lstrip("/") / dist.name, dirs_exist_ok=True)
    return site


def _prune(root: Path, site: Path) -> None:
    """Drop the console scripts (the package has wrappers), stray top-level names and unused libraries."""
    shutil.rmtree(root / "bin", ignore_errors=True)
    for name in DROP_TOPLEVEL:
        shutil.rmtree(site / name, ignore_errors=True)
    for package, keep in KEEP_NATIVE.items():
        for lib in (site / package).glob(f"lib{package}_*.so"):
            if lib.name not in keep:
                lib.unlink()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pywheels.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="build wheels in order, each importable by the next")
    cmd.add_argument("wheels", type=Path)
    cmd.add_argument("prefix", type=Path)
    cmd.add_argument("srcdirs", type=Path, nargs="+")
    cmd = sub.add_parser("site", help="print the site-packages directory of PREFIX")
    cmd.add_argument("prefix")
    cmd = sub.add_parser("install", help="install wheels under DESTDIR/PREFIX and prune them")
    cmd.add_argument("destdir", type=Path)
    cmd.add_argument("prefix")
    cmd.add_argument("licenses")
    cmd.add_argument("wheels", type=Path, nargs="+")
    return parser


def _missing(args: argparse.Namespace) -> Path | None:
    """The first source directory or wheel that is not there."""
    if args.command == "build":
        return next((p for p in args.srcdirs if not p.is_dir()), None)
    if args.command == "install":
        return next((p for p in args.wheels if not p.is_file()), None)
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    missing = _missing(args)
    if missing is not None:
        print(f"pywheels.py {args.command}: {missing}: no such file or directory", file=sys.stderr)
        return 2
    try:
        if args.command == "build":
            build(args.wheels.absolute(), args.prefix.absolute(), args.srcdirs)
        elif args.command == "install":
            install(args.destdir.absolute(), args.prefix, args.licenses, args.wheels)
        else:
            print(site_dir(args.prefix))
    except StepFailed as exc:
        print(f"pywheels.py {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
