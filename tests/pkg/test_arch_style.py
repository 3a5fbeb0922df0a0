"""Issue 14 item 4, a PKGBUILD in Arch's style: this project's files as a checksummed source archive (no
$startdir), a pkgver carrying both versions, one template per variant."""

from __future__ import annotations

import fnmatch
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from ollama_airllm import __version__
from ollama_airllm.pkggen import render as pkgrender
from ollama_airllm.pkggen.sourcetar import SKIP, source_tar
from ollama_airllm.profile import default_profile_path, load_profile

REPO = Path(__file__).resolve().parents[2]
PROFILE = load_profile(default_profile_path())


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def copy_tree(dest: Path) -> Path:
    """This project's tree as the tarball takes it, plus airllm.patch."""
    for rel in pkgrender.TREE:
        src = REPO / rel
        if src.is_dir():
            skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(src, dest / rel, symlinks=True, ignore=skip)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    shutil.copy2(REPO / pkgrender.PATCH, dest / pkgrender.PATCH)
    return dest


@pytest.mark.parametrize("variant", pkgrender.VARIANTS)
def test_own_files_are_checksummed_sources_not_read_from_startdir(variant):
    files = pkgrender.render_package(PROFILE, variant)
    pkgbuild = files["PKGBUILD"].text
    assert "startdir" not in pkgbuild
    assert f"  {pkgrender.TARBALL}\n" in pkgbuild.split("source=(")[1].split(")")[0]
    srcinfo = files[".SRCINFO"].text
    local = [line.split(" = ", 1)[1] for line in srcinfo.splitlines() if line.startswith("\tsource = ")]
    local = [entry for entry in local if "::" not in entry and "://" not in entry]
    assert local == [pkgrender.TARBALL, pkgrender.PATCH, *pkgrender.AUX_FILES, pkgrender.PROFILE]
    assert set(local) <= set(files)  # render writes every local source


def test_tarball_holds_exactly_the_tree(tmp_path):
    data = pkgrender.render_package(PROFILE)[pkgrender.TARBALL].data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path, filter="tar")
    top = tmp_path / pkgrender.TARBALL_DIR
    assert top.name == f"ollama-airllm-{__version__}" and [p.name for p in tmp_path.iterdir()] == [top.name]
    seen = 0
    for rel in pkgrender.TREE:
        src = REPO / rel
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file() or p.is_symlink()]
        for path in files:
            if any(fnmatch.fnmatch(part, pattern) for part in path.parts for pattern in SKIP):
                continue
            got = top / path.relative_to(REPO)
            seen += 1
            if path.is_symlink():
                assert os.readlink(got) == os.readlink(path), path
            else:
                assert got.read_bytes() == path.read_bytes(), path
    assert len(members(data)) == seen  # nothing else


def test_tarball_is_reproducible_from_the_same_files(tmp_path):
    first = copy_tree(tmp_path / "a")
    data = source_tar(first, pkgrender.TREE, "x")
    second = copy_tree(tmp_path / "b")
    # What a fresh clone, a build or another user changes, and the archive must not see:
    for path in (second / "runner").rglob("*.py"):
        os.utime(path, (1, 1))
        path.chmod(0o600)
    (second / "runner" / "ollama_airllm" / "__pycache__").mkdir(exist_ok=True)
    (second / "runner" / "ollama_airllm" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (second / "runner" / "ollama_airllm.egg-info").mkdir()
    (second / "runner" / "ollama_airllm.egg-info" / "PKG-INFO").write_text("x\n")
    (second / "packaging" / "empty").mkdir()
    assert source_tar(second, pkgrender.TREE, "x") == data
    infos = members(data).values()
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in infos} == {(0, 0, "root", "root", 946684800)}
    assert {m.mode for m in infos if m.isfile()} <= {0o644, 0o755}
    assert not [m for m in infos if m.isdir()]
    links = [m for m in infos if m.issym()]
    assert "x/tests/pkg/fixtures/sysfs/rx7900xtx/sys/class/drm/renderD128" in [m.name for m in links]


def test_a_changed_file_changes_the_checksum(tmp_path):
    root = copy_tree(tmp_path / "tree")
    before = pkgrender.render_package(PROFILE, root=root)
    (root / "runner" / "ollama_airllm" / "cli.py").write_text("# changed\n")
    after = pkgrender.render_package(PROFILE, root=root)
    assert before[pkgrender.TARBALL].data != after[pkgrender.TARBALL].data
    assert before["PKGBUILD"].text != after["PKGBUILD"].text  # its sha256 moved with it


def test_missing_tree_is_a_clear_error(tmp_path):
    shutil.copy2(REPO / pkgrender.PATCH, tmp_path / pkgrender.PATCH)
    with pytest.raises(pkgrender.RenderError, match=r"^cannot read .*pyproject\.toml: No such file"):
        pkgrender.render_package(PROFILE, root=tmp_path)


@pytest.mark.parametrize("variant", pkgrender.VARIANTS)
def test_pkgver_carries_both_versions(variant, tmp_path):
    files = pkgrender.render_package(PROFILE, variant)
    (tmp_path / "PKGBUILD").write_bytes(files["PKGBUILD"].data)
    script = 'source ./PKGBUILD && printf "%s\\n" "$pkgver" "$pkgrel" "$_oar" "${_ollamaver-}"'
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    pkgver, pkgrel, tree, ollama = out.stdout.splitlines()
    assert pkgver == f"0.34.4.oar{__version__}" and pkgrel == "1"
    assert tree == pkgrender.TARBALL_DIR
    assert ollama == ("0.34.4" if variant == "full" else "")
    assert set(pkgver) <= set("0123456789abcdefghijklmnopqrstuvwxyz.")  # Arch: letters, digits, periods


def test_ollama_reports_its_own_version_not_the_package_version():
    pkgbuild = pkgrender.render_package(PROFILE)["PKGBUILD"].text
    assert "version.Version=$_ollamaver " in pkgbuild and "version.Version=$pkgver" not in pkgbuild


def test_pkgver_orders_after_the_old_package_and_by_ollama_first():
    vercmp = shutil.which("vercmp")
    if vercmp is None:
        pytest.skip("vercmp is not installed (it comes with makepkg: tests/setup.d/10-apt.sh)")
    cmp = lambda a, b: int(subprocess.run([vercmp, a, b], capture_output=True, text=True).stdout)  # noqa: E731
    new = pkgrender.PKGVER
    assert cmp("0.34.4", new) < 0  # upgrades the package that had Ollama's version alone
    assert cmp(new, "0.34.4.oar0.1.1") < 0 and cmp(new, "0.34.5.oar0.0.1") < 0


def test_each_variant_has_its_own_template():
    templates = REPO / "packaging" / "templates"
    assert not (templates / "PKGBUILD.j2").exists()
    for variant in pkgrender.VARIANTS:
        assert "{% if full" not in (templates / f"PKGBUILD.{variant}.j2").read_text()
    assert "prepare()" not in pkgrender.render_package(PROFILE, "runner-only")["PKGBUILD"].text
