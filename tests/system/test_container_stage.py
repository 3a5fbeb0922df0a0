"""The CI container stage: a real pacman package, installed into a booted systemd container, checked by
the shipped doctor suite, then upgraded and removed.

What cannot run here is said in the stage output: the Ollama/HIP part is not built (no ROCm toolchain, no
GPU), so the package is the reduced CI variant and the doctor reports the Ollama checks as not applicable.
"""

from __future__ import annotations

import re
import shutil
import time

import pytest
from ollama_airllm.doctor.envfile import parse_env_file

pytestmark = [pytest.mark.container, pytest.mark.slow]

PACMAN_U = "pacman -U --noconfirm --nodeps --nodeps"
USER_EDIT = "OLLAMA_DEBUG=1"
MODEL_FILE = "/var/lib/ollama/models/blobs/sha256-oar-ci-model"
TINY_MODEL = "/var/lib/ollama/ci/tiny-llama-f32.gguf"
TINY_PORT = 11435
TINY_UNIT = "ollama-airllm@tiny.service"
HTTP_GET = (
    "python3 -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).read().decode())'"
)
# The profile the CI package is rendered from (conftest.CI_PROFILE), as the package installs it.
DOCTOR = "ollama-airllm doctor --profile /usr/share/ollama-airllm/packaging/profiles/rx6700xt.yaml"
# Doctor checks that may be "not applicable" in the container, and the reason they must give.
EXPECTED_NOT_APPLICABLE = {
    "Ollama listens on": "no Ollama binary",
    "GET /api/version": "no Ollama binary",
    "ollama.service is enabled and running": "no Ollama binary",
    "after a short generation": "no Ollama binary",
    "an AMD GPU is present": "no AMD GPU",
    "ollama.service and the runner unit, each in its own sandbox, can open": "no AMD GPU",
    "torch in the runner's Python, run in ollama.service's sandbox, sees a GPU": "no AMD GPU",
}


@pytest.fixture(scope="module")
def installed(packages, container, stage_notes):
    """The pkgrel-1 package installed with pacman -U; returns pacman's output."""
    inbox = container.host_path("/root/packages")
    inbox.mkdir(parents=True, exist_ok=True)
    for pkg in (packages.first, packages.second):
        shutil.copy(pkg, inbox / pkg.name)
    result = container.run(f"{PACMAN_U} /root/packages/{packages.first.name}")
    stage_notes.add(
        "pacman -U --nodeps --nodeps: the package's depends are Arch packages (python, python-pytorch-rocm, "
        "systemd...); in this Debian container dpkg and the venv provide them, and pacman cannot see those"
    )
    return result.stdout + result.stderr


def test_install_runs_sysusers_and_tmpfiles(installed, container):
    assert "systemd-sysusers" in installed and "systemd-tmpfiles --create" in installed, installed
    passwd = container.run("getent passwd ollama").stdout.strip().split(":")
    assert passwd[5] == "/var/lib/ollama" and passwd[6].endswith("nologin")
    owner = container.run("stat -c '%U:%G %a' /var/lib/ollama").stdout.split()
    assert owner[0] == "ollama:ollama"
    assert not int(owner[1], 8) & 0o022


def test_unit_exposure_scores(installed, container, stage_notes):
    """systemd-analyze security --offline=true on each unit the package installs (lower is better)."""
    units = container.run("pacman -Qlq $(pacman -Qqo /etc/default/ollama) | grep '/usr/lib/systemd/system/.'")
    scores = {}
    for path in units.stdout.split():
        name = path.rsplit("/", 1)[1]
        target = path
        if name.endswith("@.service"):
            # Templates are analysed as an instance: a copy named for one.
            target = f"/run/oar-analyze/{name.replace('@.', '@ci.')}"
            container.run(f"mkdir -p /run/oar-analyze && cp {path} {target}")
        out = container.run(f"systemd-analyze security --offline=true --no-pager {target}", check=False)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", out.stdout + out.stderr)
        assert found, out.stdout + out.stderr
        scores[name] = f"{found.group(1)} {found.group(2)}"
    assert scores
    for name, score in scores.items():
        stage_notes.add(f"exposure score {name}: {score}")


def test_env_file_reader_agrees_with_systemd(installed, container):
    """The doctor's EnvironmentFile reader sees exactly what systemd gives a service."""
    text = "A=1\nexport B=2\nC=x # note\nD=\"quoted value\"\nE='single # kept'\n#F=3\n"
    container.write("/run/oar-env-test", text)
    out = container.run(
        "systemd-run --quiet --wait --pipe --collect -p EnvironmentFile=/run/oar-env-test /usr/bin/env"
    ).stdout
    from_systemd = {
        k: v for k, _, v in (line.partition("=") for line in out.splitlines()) if k in set("ABCDEF")
    }
    mine = parse_env_file(text)
    assert mine.values == {k: v for k, v in from_systemd.items() if k != "C"}
    # systemd keeps an inline comment in the value; the reader reports that line as a problem.
    assert from_systemd.get("C") == "x # note"
    assert "B" not in from_systemd
    assert len(mine.problems) == 2


def test_runner_unit_answers_health(installed, container, tiny_gguf, stage_notes):
    """ollama-airllm@tiny.service serves a tiny GGUF and answers GET /health."""
    model = container.host_path(TINY_MODEL)
    model.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_gguf("llama", "F32"), model)
    container.run(f"chown -R ollama:ollama {TINY_MODEL.rsplit('/', 1)[0]}")
    container.write(
        "/etc/ollama-airllm/tiny.conf", f"MODEL={TINY_MODEL}\nPORT={TINY_PORT}\nARGS=--device cpu\n"
    )
    started = time.monotonic()
    container.run(f"systemctl start {TINY_UNIT}")
    status, body = None, ""
    while time.monotonic() - started < 180:
        probe = container.run(f"{HTTP_GET} http://127.0.0.1:{TINY_PORT}/health", check=False)
        status, body = probe.returncode, probe.stdout + probe.stderr
        if status == 0 or container.run(f"systemctl is-failed {TINY_UNIT}", check=False).returncode == 0:
            break
        time.sleep(1)
    journal = container.run(f"journalctl -u {TINY_UNIT} --no-pager -n 30 -o cat", check=False).stdout
    assert status == 0, f"/health did not answer: {body}\n{journal}"
    stage_notes.add(f"{TINY_UNIT} answered /health after {time.monotonic() - started:.1f} s: {body.strip()}")


def test_doctor_inside_the_container(installed, container, stage_notes):
    container.run("ollama-airllm calibrate --quick", timeout=300)  # as build-all.sh does before the doctor
    result = container.run(f"{DOCTOR} --hosts local://", check=False, timeout=300)
    report = result.stdout
    stage_notes.add("doctor inside the container:")
    for line in report.splitlines():
        stage_notes.add("  " + line)
    assert "Traceback" not in report + result.stderr, result.stderr
    lines = report.splitlines()
    failed = [line for line in lines if line.startswith("  FAIL")]
    assert not failed, report + result.stderr
    assert result.returncode == 0, report + result.stderr
    for i, line in enumerate(lines):
        if line.startswith("  n/a"):
            title, reason = line[8:], lines[i + 1].strip()
            expected = [why for start, why in EXPECTED_NOT_APPLICABLE.items() if title.startswith(start)]
            assert expected and expected[0] in reason, f"unexpected n/a: {title}: {reason}"
    assert sum(line.startswith("  ok") for line in lines) >= 15, report


@pytest.fixture
def stand_in_gpu(installed, container):
    """STAND-IN for AMD GPU hardware, which this machine lacks: /dev/kfd and /dev/dri/renderD128 (the CI
    profile's render node) as char nodes of /dev/null (1:3), mode 0660 root:render as on systems without
    systemd's 0666 rule, and a tmpfs over /sys/class with drm/card0/device/vendor = 0x1002. Only the
    permission checks use it."""
    container.run(
        "mknod -m 0660 /dev/kfd c 1 3 && mkdir -p /dev/dri && mknod -m 0660 /dev/dri/renderD128 c 1 3 "
        "&& chgrp render /dev/kfd /dev/dri/renderD128 "
        "&& mount -t tmpfs -o mode=0755 oar-stand-in /sys/class && mkdir -p /sys/class/drm/card0/device "
        "&& echo 0x1002 > /sys/class/drm/card0/device/vendor"
    )
    yield
    container.run("umount /sys/class; rm -f /dev/kfd /dev/dri/renderD128", check=False)


GPU_ACCESS = "kfd_present or gpu_devices_reachable or gpu_groups"


def test_doctor_gpu_access_with_stand_in_nodes(stand_in_gpu, container):
    """With render-group nodes, the package's grants (SupplementaryGroups, `m ollama render`) pass; without
    them the doctor names the missing group and the node it cannot open."""
    result = container.run(f"{DOCTOR} -k '{GPU_ACCESS}'", check=False)
    assert result.returncode == 0 and "3 ok, 0 failed, 0 not applicable" in result.stdout, result.stdout
    dropin = "/etc/systemd/system/ollama.service.d/oar-no-groups.conf"
    container.run(f"mkdir -p {dropin.rsplit('/', 1)[0]}")
    container.write(dropin, "[Service]\nSupplementaryGroups=\n")
    container.run("gpasswd -d ollama render && systemctl daemon-reload")
    try:
        result = container.run(f"{DOCTOR} -k '{GPU_ACCESS}'", check=False)
        report = result.stdout
        assert result.returncode == 1, report
        assert "ollama.service runs without group render" in report, report
        assert "fix: add `SupplementaryGroups=render video` in a drop-in" in report, report
        assert "ollama.service cannot open /dev/kfd, /dev/dri/renderD128" in report, report
        assert "/dev/kfd root:render 660" in report, report
        assert "Permission denied" in report, report
    finally:
        container.run(f"rm -f {dropin} && gpasswd -a ollama render && systemctl daemon-reload")


def test_doctor_opens_the_gpu_inside_the_units_sandbox(stand_in_gpu, container):
    """The device check runs with the unit's own settings: a drop-in with PrivateDevices=yes (a private /dev
    without the GPU) fails it, though the ollama user and its groups could open the nodes outside the unit."""
    dropin = "/etc/systemd/system/ollama-airllm@.service.d/oar-private-devices.conf"
    container.run(f"mkdir -p {dropin.rsplit('/', 1)[0]}")
    container.write(dropin, "[Service]\nPrivateDevices=yes\n")
    container.run("systemctl daemon-reload")
    try:
        outside = container.run("test -r /dev/kfd -a -w /dev/kfd", user="ollama", check=False)
        assert outside.returncode == 0, "the ollama user itself must be able to open the stand-in nodes"
        result = container.run(f"{DOCTOR} -k gpu_devices_reachable", check=False)
        report = result.stdout
        assert result.returncode == 1, report
        assert "ollama-airllm@.service cannot open /dev/kfd, /dev/dri/renderD128" in report, report
        assert "/dev/kfd: not in the unit's /dev (PrivateDevices=yes?)" in report, report
        assert report.splitlines()[-1].startswith("0 ok, 1 failed"), report
    finally:
        container.run(f"rm -f {dropin} && systemctl daemon-reload")


def test_doctor_runs_torch_inside_the_units_sandbox(stand_in_gpu, container):
    """The torch check runs the runner's Python as a transient service with ollama.service's sandbox and
    environment: it gets that far and reports this torch as not a ROCm build (the stage's venv has none)."""
    result = container.run(f"{DOCTOR} -k torch_sees_gpu", check=False, timeout=300)
    report = result.stdout
    assert result.returncode == 1, report + result.stderr
    assert "the runner's torch is not a ROCm build (torch.version.hip is None)" in report, report
    assert report.splitlines()[-1].startswith("0 ok, 1 failed"), report


def test_doctor_finds_a_broken_env_file(installed, container):
    """The classic failures on a real install: the override behind `export`; an edit the service never saw."""
    original = container.run("cat /etc/default/ollama").stdout
    assert "\nHSA_OVERRIDE_GFX_VERSION=10.3.0\n" in original
    broken = original.replace("\nHSA_OVERRIDE_GFX_VERSION=", "\nexport HSA_OVERRIDE_GFX_VERSION=")
    try:
        container.write("/etc/default/ollama", broken + "OLLAMA_KEEP_ALIVE=1h\n")
        result = container.run(f"{DOCTOR} -k 'env_file or hsa'", check=False)
        report = result.stdout
        assert result.returncode == 1, report + result.stderr
        assert "starts with `export`; systemd reads the key as 'export HSA_OVERRIDE_GFX_VERSION'" in report
        assert "fix: write plain KEY=value lines" in report
        assert "sets HSA_OVERRIDE_GFX_VERSION to None, the profile needs '10.3.0'" in report
        assert "fix: write the line `HSA_OVERRIDE_GFX_VERSION=10.3.0`" in report
        assert re.search(r"ollama-airllm@tiny.service: OLLAMA_KEEP_ALIVE \(file '1h', process '5m'\)", report)
        assert ", 3 failed," in report.splitlines()[-1], report
    finally:
        container.write("/etc/default/ollama", original)


def test_doctor_finds_a_wildcard_listener(installed, container):
    """A socket of the ollama user on 0.0.0.0 is reported (the profile says 127.0.0.1)."""
    container.run(
        "systemd-run --unit=oar-wildcard -p User=ollama python3 -m http.server --bind 0.0.0.0 18080 "
        "&& for i in $(seq 50); do ss -ltnH | grep -q ':18080 ' && break; sleep 0.1; done"
    )
    try:
        result = container.run(f"{DOCTOR} -k all_addresses", check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "ollama listens on all addresses (0.0.0.0:18080)" in result.stdout, result.stdout
    finally:
        container.run("systemctl stop oar-wildcard", check=False)


def test_doctor_reports_a_bad_installed_profile(installed, container):
    """The default profile path is read on the checked host; a broken one is one clear failure."""
    container.write("/etc/ollama-airllm/profile.yaml", "schema_version: 1\nname: Bad Name\n")
    try:
        result = container.run("ollama-airllm doctor -k 'profile_found or models_dir'", check=False)
        report = result.stdout
        assert result.returncode == 1, report + result.stderr
        assert "no usable profile: invalid profile /etc/ollama-airllm/profile.yaml" in report, report
        assert "name: got 'Bad Name'" in report, report
        assert "not applicable: no profile to compare with (see the profile check)" in report, report
        assert "Traceback" not in report + result.stderr
    finally:
        container.run("rm -f /etc/ollama-airllm/profile.yaml")


def test_doctor_checks_that_ollama_can_write_its_data_dirs(installed, container):
    """A models directory ollama cannot write and a cache directory on an unmounted disk are each one failure
    that names the path (issue 13: directories outside /var/lib/ollama are never re-owned)."""
    container.run(
        "mkdir -m 0755 -p /srv/oar-ro && sed -e 's#models_dir: /var/lib/ollama#models_dir: /srv/oar-ro#' "
        "-e 's#cache_dir: /var/lib/ollama/airllm#cache_dir: /run/media/me/DISK/airllm#' "
        "/usr/share/ollama-airllm/packaging/profiles/rx6700xt.yaml > /etc/ollama-airllm/profile.yaml"
    )
    try:
        result = container.run("ollama-airllm doctor -k 'dir_writable'", check=False)
        report = result.stdout
        assert result.returncode == 1 and "Traceback" not in report + result.stderr, report + result.stderr
        assert "ollama cannot write /srv/oar-ro, so Ollama cannot store models" in report, report
        missing = "/run/media/me/DISK/airllm does not exist and neither does /run/media/me/DISK"
        assert missing in report, report
        assert report.splitlines()[-1].startswith("0 ok, 2 failed"), report
    finally:
        container.run("rm -f /etc/ollama-airllm/profile.yaml && rmdir /srv/oar-ro")


def test_upgrade_keeps_the_edited_env_file(packages, installed, container):
    container.run(f"echo {USER_EDIT} >> /etc/default/ollama")
    edited = container.run("cat /etc/default/ollama").stdout
    container.run(f"{PACMAN_U} /root/packages/{packages.second.name}")
    assert (
        container.run("pacman -Q $(pacman -Qqo /etc/default/ollama)").stdout.split()[1]
        == packages.second_version
    )
    assert container.run("cat /etc/default/ollama").stdout == edited
    pacnew = container.run("cat /etc/default/ollama.pacnew").stdout
    assert USER_EDIT not in pacnew and "\nOLLAMA_KEEP_ALIVE=10m\n" in pacnew
    assert not parse_env_file(pacnew).problems


def test_remove_keeps_models_and_leaves_no_orphans(installed, container):
    container.run(f"mkdir -p {MODEL_FILE.rsplit('/', 1)[0]} && echo weights > {MODEL_FILE}")
    container.run("chown -R ollama:ollama /var/lib/ollama/models")
    package = container.run("pacman -Qqo /etc/default/ollama").stdout.strip()
    container.run("systemctl stop 'ollama-airllm@*' ollama.service", check=False)
    container.run(f"pacman -R --noconfirm {package}")
    assert container.run(f"cat {MODEL_FILE}").stdout == "weights\n"
    saved = container.run("cat /etc/default/ollama.pacsave").stdout
    assert USER_EDIT in saved
    assert container.run("test -e /etc/default/ollama", check=False).returncode != 0
    orphans = container.run("find / -xdev \\( -nouser -o -nogroup \\) -print", check=False).stdout
    assert orphans == "", f"files owned by a user or group that no longer exists:\n{orphans}"
    assert container.run(f"pacman -Qq {package}", check=False).returncode != 0
    units = container.run("ls /usr/lib/systemd/system /usr/lib/sysusers.d /usr/lib/tmpfiles.d").stdout
    assert "ollama" not in units, units
