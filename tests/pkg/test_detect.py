"""`ollama-airllm detect` on fixture sysfs trees: GPUs, gfx targets, overrides, visible devices, exit codes.

The trees under fixtures/sysfs/ follow the kernel's formats (arch-packaging-and-amd.md §4); no AMD GPU
exists on the test machine, so real sysfs is replaced by these files (the only stand-in in this suite).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from ollama_airllm.cli import main
from ollama_airllm.errors import EXIT_NO_GPU
from ollama_airllm.hardware.gfx import GfxVersion, effective_target, needed_override
from ollama_airllm.hardware.rocm_tools import parse_rocm_smi_vram, parse_rocminfo
from ollama_airllm.hardware.sysfs import read_key_values
from ollama_airllm.profile import Profile, load_profile, validate_profile

FIXTURES = Path(__file__).parent / "fixtures"
SYSFS = FIXTURES / "sysfs"
TOOLS = FIXTURES / "rocm-tools"
GIB = 1 << 30


def run_detect(tree: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["detect", "--sysfs-root", str(tree), "--proc-root", str(tree), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def detect_profile(tree: Path, *args: str) -> Profile:
    code, out, err = run_detect(tree, *args)
    assert code == 0, err
    return validate_profile(yaml.safe_load(out), "detect output")


def copy_case(case: str, tmp_path: Path) -> Path:
    target = tmp_path / case
    shutil.copytree(SYSFS / case, target, symlinks=True)
    return target


# --- gfx target numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kfd", "name"),
    [(90008, "gfx908"), (90010, "gfx90a"), (90012, "gfx90c"), (90402, "gfx942"), (100301, "gfx1031"),
     (110000, "gfx1100"), (110003, "gfx1103"), (110501, "gfx1151"), (120001, "gfx1201"), (100601, "gfx1061")],
)  # fmt: skip
def test_kfd_version_to_gfx_name(kfd: int, name: str) -> None:
    version = GfxVersion.from_kfd(kfd)
    assert version is not None and version.name == name
    assert GfxVersion.from_name(name).kfd == kfd


def test_cpu_node_and_out_of_range_versions() -> None:
    assert GfxVersion.from_kfd(0) is None
    for bad in (91600, 90016, -1):
        with pytest.raises(ValueError):
            GfxVersion.from_kfd(bad)


@given(st.integers(1, 63), st.integers(0, 15), st.integers(0, 15))
def test_kfd_name_override_round_trip(major: int, minor: int, stepping: int) -> None:
    version = GfxVersion.from_kfd(major * 10000 + minor * 100 + stepping)
    assert version == GfxVersion(major, minor, stepping)
    assert GfxVersion.from_name(version.name) == version
    assert GfxVersion.from_override(version.override) == version


@given(st.integers(1, 99), st.integers(0, 99), st.integers(0, 99))
def test_kfd_decoding_never_misreads(major: int, minor: int, stepping: int) -> None:
    value = major * 10000 + minor * 100 + stepping
    if minor > 15 or stepping > 15:
        with pytest.raises(ValueError):
            GfxVersion.from_kfd(value)
    else:
        assert GfxVersion.from_kfd(value) == GfxVersion(major, minor, stepping)


def test_override_table() -> None:
    assert needed_override("gfx1100") is None  # never for a supported target
    assert needed_override("gfx1031") == "10.3.0"
    assert needed_override("gfx1036") == "10.3.0"
    assert needed_override("gfx1103") == "11.0.0"
    assert needed_override("gfx906") is None
    assert effective_target("gfx1032") == "gfx1030"
    assert effective_target("gfx1010") is None


# --- one case per fixture tree ------------------------------------------------------------------------------

CASES = {
    # case: (gfx of every GPU, visible devices, override, amdgpu_targets, integrated flags, VRAM GiB of GPU 0)
    "rx7900xtx": (["gfx1100"], [0], None, ["gfx1100"], [False], 23.98),
    "rx7800xt": (["gfx1101"], [0], None, ["gfx1101"], [False], 15.98),
    "rx6700xt": (["gfx1031"], [0], "10.3.0", ["gfx1030"], [False], 11.98),
    "igpu-780m-rx7900xt": (["gfx1103", "gfx1100"], [1], None, ["gfx1100"], [True, False], 0.5),
    "2x-rx7900xtx": (["gfx1100", "gfx1100"], [0, 1], None, ["gfx1100"], [False, False], 23.98),
    "mi300x": (["gfx942"], [0], None, ["gfx942"], [False], 191.98),
    "rx9070xt": (["gfx1201"], [0], None, ["gfx1201"], [False], 15.94),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_tree(case: str) -> None:
    gfx, visible, override, targets, integrated, vram0 = CASES[case]
    profile = detect_profile(SYSFS / case)
    assert [gpu.gfx for gpu in profile.gpus] == gfx
    assert profile.visible_devices == visible
    assert profile.hsa_override == override
    assert profile.amdgpu_targets == targets
    assert [gpu.integrated for gpu in profile.gpus] == integrated
    assert profile.gpus[0].vram_total_bytes / GIB == pytest.approx(vram0, abs=0.01)
    assert profile.pins.ollama == "0.34.4"
    assert profile.system.ram_bytes is not None and profile.system.ram_bytes >= 16 * GIB


@pytest.mark.parametrize("case", ["rx7900xtx", "rx7800xt", "rx6700xt", "rx9070xt", "mi300x", "2x-rx7900xtx"])
def test_reference_profile_matches_its_fixture(case: str) -> None:
    """packaging/profiles/<case>.yaml describes the hardware detect finds in fixtures/sysfs/<case>."""
    reference = load_profile(Path(__file__).parents[2] / "packaging" / "profiles" / f"{case}.yaml")
    detected = detect_profile(SYSFS / case)
    keys = ("gfx", "name", "pci_device_id", "pci_slot", "render_minor", "vram_total_bytes", "integrated")
    assert [[getattr(g, k) for k in keys] for g in reference.gpus] == [
        [getattr(g, k) for k in keys] for g in detected.gpus
    ]
    for field in ("amdgpu_targets", "hsa_override_gfx_version", "visible_devices"):
        assert getattr(reference, field) == getattr(detected, field)
    assert reference.system.ram_bytes == detected.system.ram_bytes


def test_identity_fields_of_the_reference_sample() -> None:
    gpu = detect_profile(SYSFS / "rx7900xtx").gpus[0]
    assert (gpu.name, gpu.pci_device_id, gpu.pci_slot, gpu.render_minor, gpu.kfd_node) == (
        "AMD Radeon RX 7900 XTX", "0x744c", "0000:03:00.0", 128, 1,
    )  # fmt: skip
    assert gpu.vram_total_bytes == 25753026560


def test_two_gpus_have_their_own_cards() -> None:
    profile = detect_profile(SYSFS / "2x-rx7900xtx")
    assert [g.pci_slot for g in profile.gpus] == ["0000:03:00.0", "0000:08:00.0"]
    assert [g.render_minor for g in profile.gpus] == [129, 130]
    assert profile.rocr_visible_devices == "0,1"
    assert profile.name == "2x-gfx1100"


def test_igpu_only_with_flag() -> None:
    profile = detect_profile(SYSFS / "igpu-780m-rx7900xt", "--include-igpu")
    assert profile.visible_devices == [0, 1]
    # gfx1103 runs gfx1100 kernels; 11.0.0 is the dGPU's own version, so one override serves both.
    assert (profile.hsa_override, profile.amdgpu_targets) == ("11.0.0", ["gfx1100"])


def test_igpu_note_on_stderr() -> None:
    code, _, err = run_detect(SYSFS / "igpu-780m-rx7900xt")
    assert code == 0
    assert "integrated GPU; pass --include-igpu to use it" in err


def test_igpu_alone_exits_3_with_a_hint(tmp_path: Path) -> None:
    tree = copy_case("igpu-780m-rx7900xt", tmp_path)
    shutil.rmtree(tree / "sys/class/kfd/kfd/topology/nodes/2")
    shutil.rmtree(tree / "sys/class/drm/card1")
    code, _, err = run_detect(tree)
    assert code == EXIT_NO_GPU and "pass --include-igpu" in err
    assert detect_profile(tree, "--include-igpu").hsa_override == "11.0.0"


def test_strix_halo_igpu_is_used_by_default(tmp_path: Path) -> None:
    tree = copy_case("igpu-780m-rx7900xt", tmp_path)
    props = tree / "sys/class/kfd/kfd/topology/nodes/1/properties"
    props.write_text(props.read_text().replace("gfx_target_version 110003", "gfx_target_version 110501"))
    profile = detect_profile(tree)
    assert profile.gpus[0].integrated and profile.gpus[0].gfx == "gfx1151"
    assert (profile.visible_devices, profile.hsa_override) == ([0, 1], None)
    assert profile.amdgpu_targets == ["gfx1100", "gfx1151"]


def test_unknown_and_non_numeric_keys_are_tolerated() -> None:
    values = read_key_values(SYSFS / "igpu-780m-rx7900xt/sys/class/kfd/kfd/topology/nodes/1/properties")
    assert values["gpu_family"] == "gfx115X"


def test_writes_the_profile_file(tmp_path: Path) -> None:
    out = tmp_path / "profile.yaml"
    code, stdout, _ = run_detect(
        SYSFS / "rx6700xt", "-o", str(out), "--name", "my-box", "--models-dir", "/srv/m"
    )
    assert code == 0 and stdout == ""
    profile = load_profile(out)
    assert (profile.name, profile.ollama.models_dir, profile.airllm.cache_dir) == (
        "my-box",
        "/srv/m",
        "/srv/m/airllm",
    )
    assert out.read_text().startswith("# Hardware profile from `ollama-airllm detect`")
    assert [p.name for p in tmp_path.iterdir()] == ["profile.yaml"]


def test_bad_name_is_a_usage_error() -> None:
    code, _, err = run_detect(SYSFS / "rx7900xtx", "--name", "bad name;rm")
    assert code == 2
    assert "name: got 'bad name;rm'; allowed:" in err


# --- matching KFD nodes to DRM cards, and the fallbacks -----------------------------------------------------


def test_card_found_by_render_node_without_pci_address(tmp_path: Path) -> None:
    tree = copy_case("rx7900xtx", tmp_path)
    (tree / "sys/class/drm/card1/device/uevent").unlink()
    props = tree / "sys/class/kfd/kfd/topology/nodes/1/properties"
    props.write_text(props.read_text().replace("location_id 768", "location_id 0"))
    gpu = detect_profile(tree).gpus[0]
    assert gpu.vram_total_bytes == 25753026560  # from card1 via renderD128
    assert gpu.pci_slot is None


def test_vram_from_rocm_smi_when_sysfs_lacks_it(tmp_path: Path) -> None:
    tree = copy_case("rx7900xtx", tmp_path)
    (tree / "sys/class/drm/card1/device/mem_info_vram_total").unlink()
    code, _, err = run_detect(tree)
    assert code == 0 and "no VRAM size" in err  # nothing to fall back on: 0 and a note
    profile = detect_profile(tree, "--rocm-smi-output", str(TOOLS / "rocm-smi-vram-rx7900xtx.json"))
    assert profile.gpus[0].vram_total_bytes == 25753026560


def test_vram_and_name_from_rocminfo(tmp_path: Path) -> None:
    tree = copy_case("rx7900xtx", tmp_path)
    (tree / "sys/class/drm/card1/device/mem_info_vram_total").unlink()
    props = tree / "sys/class/kfd/kfd/topology/nodes/1/properties"
    props.write_text(props.read_text().replace("device_id 29772", "device_id 29773"))  # not in the name table
    profile = detect_profile(tree, "--rocminfo-output", str(TOOLS / "rocminfo-rx7900xtx.txt"))
    assert profile.gpus[0].vram_total_bytes == 25149440 * 1024
    assert profile.gpus[0].name == "AMD Radeon RX 7900 XTX"


def test_rocm_tool_parsers() -> None:
    (agent,) = parse_rocminfo((TOOLS / "rocminfo-rx7900xtx.txt").read_text())
    assert (agent.name, agent.node, agent.chip_id, agent.bdfid, agent.uuid, agent.apu) == (
        "gfx1100", 1, 0x744C, 768, "GPU-4fe81514950cd6cd", False,
    )  # fmt: skip
    assert parse_rocm_smi_vram((TOOLS / "rocm-smi-vram-rx7900xtx.json").read_text()) == {0: 25753026560}
    with pytest.raises(ValueError, match="not JSON"):
        parse_rocm_smi_vram("ERROR: no GPU")


def test_mixed_gpus_needing_different_overrides(tmp_path: Path) -> None:
    tree = copy_case("2x-rx7900xtx", tmp_path)
    props = tree / "sys/class/kfd/kfd/topology/nodes/2/properties"
    text = props.read_text().replace("gfx_target_version 110000", "gfx_target_version 100301")
    props.write_text(text.replace("device_id 29772", "device_id 29663"))
    (tree / "sys/class/drm/card2/device/device").write_text("0x73df\n")
    (tree / "sys/class/drm/card2/device/mem_info_vram_total").write_text("12868124672\n")
    code, out, err = run_detect(tree)
    assert code == 0
    profile = validate_profile(yaml.safe_load(out))
    # One override for all: the 24 GiB gfx1100 group wins over the 12 GiB gfx1031 that needs 10.3.0.
    assert (profile.visible_devices, profile.hsa_override, profile.amdgpu_targets) == ([0], None, ["gfx1100"])
    assert "needs HSA_OVERRIDE_GFX_VERSION=10.3.0, unlike the GPUs chosen" in err


# --- failures: clear message, right exit code, no traceback -------------------------------------------------


def test_no_amd_gpu_exits_3() -> None:
    code, out, err = run_detect(SYSFS / "no-amd-gpu")
    assert code == EXIT_NO_GPU
    assert out == ""
    assert "no AMD GPU found" in err and "Traceback" not in err


def test_only_unusable_gpu_exits_3(tmp_path: Path) -> None:
    tree = copy_case("rx7900xtx", tmp_path)
    props = tree / "sys/class/kfd/kfd/topology/nodes/1/properties"
    props.write_text(props.read_text().replace("gfx_target_version 110000", "gfx_target_version 90006"))
    code, _, err = run_detect(tree)
    assert code == EXIT_NO_GPU
    assert "no AMD GPU that Ollama's ROCm build can use" in err and "gfx906" in err and "Vulkan" in err


def test_amdgpu_card_without_kfd_exits_3(tmp_path: Path) -> None:
    tree = copy_case("rx7900xtx", tmp_path)
    shutil.rmtree(tree / "sys/class/kfd")
    code, _, err = run_detect(tree)
    assert code == EXIT_NO_GPU
    assert "amdgpu cards card1 exist but KFD exposes no GPU node" in err


def test_malformed_properties_names_the_file() -> None:
    code, out, err = run_detect(SYSFS / "malformed-properties")
    assert code == 1 and out == ""
    assert "malformed-properties/sys/class/kfd/kfd/topology/nodes/1/properties" in err
    assert "gfx_target_version should be a decimal number, got 'gfx1100'" in err


@pytest.mark.parametrize(
    ("relpath", "content", "expected"),
    [
        ("sys/class/drm/card1/device/mem_info_vram_total", "lots\n", "vram_total: should hold a decimal"),
        ("sys/class/drm/card1/device/vendor", "AMD\n", "vendor: should hold a hex number"),
        ("proc/meminfo", "MemTotal: many\n", "meminfo: MemTotal should read '<number> kB'"),
        ("sys/class/kfd/kfd/topology/nodes/1/properties", "vendor_id 4098\n", "no gfx_target_version line"),
        ("sys/class/kfd/kfd/topology/nodes/1/properties", "gfx_target_version 111600\nvendor_id 4098\n",
         "minor and stepping must be at most 15"),
    ],
)  # fmt: skip
def test_other_malformed_files(tmp_path: Path, relpath: str, content: str, expected: str) -> None:
    tree = copy_case("rx7900xtx", tmp_path)
    (tree / relpath).write_text(content)
    code, _, err = run_detect(tree)
    assert code == 1
    assert relpath.split("/")[-1] in err and expected in err
    assert "Traceback" not in err


def test_console_script_exit_codes(tmp_path: Path) -> None:
    """The installed `ollama-airllm` script: 0, 2 (usage), 3 (no GPU), 1 (malformed), never a traceback."""
    exe = shutil.which(
        "ollama-airllm", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    )
    assert exe, "ollama-airllm console script is not installed"

    def run(case: str | Path, *extra: str) -> subprocess.CompletedProcess[str]:
        tree = str(SYSFS / case) if isinstance(case, str) else str(case)
        argv = [exe, "detect", "-q", "--sysfs-root", tree, "--proc-root", tree, *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    ok = run("rx7900xtx")
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout)["amdgpu_targets"] == ["gfx1100"]
    usage = run(tmp_path / "does-not-exist")
    assert usage.returncode == 2 and "does not exist" in usage.stderr
    none = run("no-amd-gpu")
    assert none.returncode == 3 and "no AMD GPU found" in none.stderr
    bad = run("malformed-properties")
    assert bad.returncode == 1 and "properties" in bad.stderr
    assert all("Traceback" not in p.stderr for p in (ok, usage, none, bad))
