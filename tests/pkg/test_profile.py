"""The profile schema: reference profiles load, each bad value gives one clear line, writes are atomic."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from ollama_airllm.errors import UsageError, UserError
from ollama_airllm.profile import (
    PACKAGING_DIR_ENV,
    Profile,
    default_profile_path,
    dump_profile,
    load_profile,
    packaging_dir,
    profile_to_yaml,
    validate_profile,
)

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted((REPO / "packaging" / "profiles").glob("*.yaml"))


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load(default_profile_path().read_text())


def problems(data: dict) -> str:
    with pytest.raises(UsageError) as info:
        validate_profile(data, "test.yaml")
    assert info.value.exit_code == 2
    return info.value.message


def with_change(base: dict, path: str, value: object) -> dict:
    data = copy.deepcopy(base)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return data


# --- reference profiles -------------------------------------------------------------------------------------


def test_reference_profiles_exist() -> None:
    names = {p.stem for p in PROFILES}
    assert {"rx7900xtx", "rx7800xt", "rx6700xt", "rx9070xt", "mi300x", "2x-rx7900xtx"} <= names


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_reference_profile_loads(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem
    assert profile.pins.ollama == "0.34.4"
    assert profile.visible_gpus
    # Written back and read again, nothing changes.
    assert validate_profile(yaml.safe_load(profile_to_yaml(profile))) == profile


def test_default_profile_and_renderer_properties() -> None:
    assert default_profile_path() == REPO / "packaging" / "profiles" / "rx7900xtx.yaml"
    profile = load_profile(default_profile_path())
    assert (profile.hsa_override, profile.rocr_visible_devices, profile.amdgpu_targets_str) == (
        None,
        "0",
        "gfx1100",
    )
    assert profile.ollama.host == "127.0.0.1:11434"
    assert profile.ollama.models_dir == "/var/lib/ollama"


def test_multi_gpu_and_override_properties() -> None:
    two = load_profile(REPO / "packaging" / "profiles" / "2x-rx7900xtx.yaml")
    assert two.rocr_visible_devices == "0,1"
    rx6700 = load_profile(REPO / "packaging" / "profiles" / "rx6700xt.yaml")
    assert (rx6700.hsa_override, rx6700.amdgpu_targets_str) == ("10.3.0", "gfx1030")
    assert not rx6700.gpus[0].supported


def test_amdgpu_targets_may_list_more(base: dict) -> None:
    profile = validate_profile(with_change(base, "amdgpu_targets", ["gfx1100", "gfx1101"]))
    assert profile.amdgpu_targets_str == "gfx1100;gfx1101"


def test_defaults_fill_optional_sections(base: dict) -> None:
    data = {
        k: v
        for k, v in base.items()
        if k not in {"ollama", "airllm", "pins", "system", "hsa_override_gfx_version"}
    }
    profile = validate_profile(data)
    assert profile.ollama.keep_alive == "5m"
    assert profile.airllm.compression == "none"
    assert profile.pins.llama_cpp == "b11081"


def test_unquoted_pci_slot_stays_a_string(tmp_path: Path) -> None:
    # YAML 1.1 would read 0000:03:00.0 as a base-60 number; the profile loader does not.
    text = default_profile_path().read_text().replace('"0000:03:00.0"', "0000:03:00.0")
    assert "pci_slot: 0000:03:00.0\n" in text
    (tmp_path / "p.yaml").write_text(text)
    assert load_profile(tmp_path / "p.yaml").gpus[0].pci_slot == "0000:03:00.0"


# --- one clear line per problem -----------------------------------------------------------------------------

BAD_VALUES = [
    ("name", "Bad Name", "name: got 'Bad Name'"),
    ("gpus.0.name", "x\n$(touch /tmp/p)", "gpus[0].name: got 'x\\n$(touch /tmp/p)'"),
    ("gpus.0.gfx", "gfx11OO", "gpus[0].gfx: got 'gfx11OO'"),
    ("gpus.0.pci_device_id", "744c", "gpus[0].pci_device_id: got '744c'"),
    ("gpus.0.vram_total_bytes", -1, "gpus[0].vram_total_bytes: got -1; allowed: greater than or equal to 0"),
    ("gpus.0.integrated", "no", "gpus[0].integrated: got 'no'; allowed: a valid boolean"),
    ("gpus.0.supported", False, "gpus[0].supported: got False; allowed: true for gfx1100"),
    (
        "amdgpu_targets",
        ["gfx803"],
        "amdgpu_targets[0]: got 'gfx803'; allowed: a target of Ollama's rocm_v7_2",
    ),
    (
        "amdgpu_targets",
        ["gfx1100", "gfx1100"],
        "amdgpu_targets: got ['gfx1100', 'gfx1100']; allowed: a list without",
    ),
    ("amdgpu_targets", "gfx1100", "amdgpu_targets: got 'gfx1100'; allowed: a valid list"),
    (
        "hsa_override_gfx_version",
        "10.3",
        "hsa_override_gfx_version: got '10.3'; allowed: null or three decimal",
    ),
    ("hsa_override_gfx_version", "10.3.0;id", "hsa_override_gfx_version: got '10.3.0;id'"),
    (
        "hsa_override_gfx_version",
        "9.0.0",
        "hsa_override_gfx_version: got '9.0.0'; allowed: null or the version of",
    ),
    ("visible_devices", [0, 2], "visible_devices[1]: got 2; allowed: an index listed in gpus (0)"),
    ("visible_devices", [], "visible_devices: got []; allowed: List should have at least 1 item"),
    ("ollama.host", "127.0.0.1", "ollama.host: got '127.0.0.1'; allowed: host:port"),
    ("ollama.host", "0.0.0.0:0", "ollama.host: got '0.0.0.0:0'"),
    ("ollama.host", "300.1.1.1:80", "ollama.host: got '300.1.1.1:80'"),
    ("ollama.host", "[::1:11434", "ollama.host: got '[::1:11434'"),
    (
        "ollama.models_dir",
        "var/lib/ollama",
        "ollama.models_dir: got 'var/lib/ollama'; allowed: a directory dedicated to Ollama",
    ),
    ("ollama.models_dir", "/srv/my models", "ollama.models_dir: got '/srv/my models'"),
    ("ollama.models_dir", "/srv/../etc", "ollama.models_dir: got '/srv/../etc'"),
    ("ollama.models_dir", "/srv/%h", "ollama.models_dir: got '/srv/%h'"),
    ("ollama.models_dir", "/", "refused because it is not an absolute path of the allowed characters"),
    ("ollama.models_dir", "/srv", "refused because /srv is shared (a system directory"),
    ("ollama.models_dir", "/etc/ollama", "refused because /etc/ollama is outside those places"),
    ("airllm.cache_dir", "/tmp/airllm", "airllm.cache_dir: got '/tmp/airllm'"),
    ("ollama.context_length", 100, "ollama.context_length: got 100; allowed: greater than or equal to 256"),
    ("ollama.context_length", "8192", "ollama.context_length: got '8192'; allowed: a valid integer"),
    ("ollama.flash_attention", 1, "ollama.flash_attention: got 1; allowed: a valid boolean"),
    ("ollama.kv_cache_type", "q5_0", "ollama.kv_cache_type: got 'q5_0'; allowed: 'f16', 'q8_0' or 'q4_0'"),
    ("ollama.keep_alive", "5 m", "ollama.keep_alive: got '5 m'; allowed: -1 (forever)"),
    ("ollama.keep_alive", "forever", "ollama.keep_alive: got 'forever'"),
    ("ollama.num_parallel", 0, "ollama.num_parallel: got 0; allowed: greater than or equal to 1"),
    ("airllm.compression", "2bit", "airllm.compression: got '2bit'; allowed: 'none', '8bit' or '4bit'"),
    ("airllm.cache_dir", "/var/lib/ollama/air`id`", "airllm.cache_dir: got '/var/lib/ollama/air`id`'"),
    ("airllm.vram_reserve_mib", -5, "airllm.vram_reserve_mib: got -5"),
    ("pins.ollama", "0.34.3", "pins.ollama: got '0.34.3'; allowed: '0.34.4'"),
    ("pins.llama_cpp", "b11082", "pins.llama_cpp: got 'b11082'; allowed: 'b11081'"),
    ("pins.airllm", "4.0.1", "pins.airllm: got '4.0.1'; allowed: '4.0.0'"),
    ("schema_version", 2, "schema_version: got 2; allowed: 1"),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), BAD_VALUES, ids=[f"{p}={v!r}" for p, v, _ in BAD_VALUES]
)
def test_bad_value_names_path_value_and_allowed(base: dict, path: str, value: object, expected: str) -> None:
    message = problems(with_change(base, path, value))
    assert message.startswith("invalid profile test.yaml:\n  - ")
    assert expected in message


def test_unknown_key_lists_allowed_keys(base: dict) -> None:
    message = problems(with_change(base, "ollama.hostname", "x"))
    assert (
        "ollama.hostname: got unknown key 'hostname'; allowed keys: host, models_dir, context_length"
        in message
    )


def test_missing_key(base: dict) -> None:
    data = copy.deepcopy(base)
    del data["gpus"][0]["gfx"]
    assert "gpus[0].gfx: missing; allowed: this key is required" in problems(data)


def test_every_problem_is_listed(base: dict) -> None:
    data = with_change(base, "ollama.kv_cache_type", "q9")
    data = with_change(data, "airllm.compression", "1bit")
    data["extra"] = 1
    lines = problems(data).splitlines()[1:]
    assert len(lines) == 3
    assert all(re.match(r"  - [a-z_.\[\]0-9]+: got .*; allowed", line) for line in lines)


def test_top_level_must_be_a_mapping() -> None:
    assert "(top level): got [1, 2]; allowed: a mapping" in problems([1, 2])  # type: ignore[arg-type]


# --- rules across fields ------------------------------------------------------------------------------------


def test_unsupported_gpu_needs_the_override(base: dict) -> None:
    data = with_change(base, "gpus.0.gfx", "gfx1031")
    data["gpus"][0]["supported"] = False
    assert (
        "visible_devices[0]: got 0; allowed: a supported GPU; gpus index 0 is gfx1031: set "
        "hsa_override_gfx_version: 10.3.0" in problems(data)
    )
    data["hsa_override_gfx_version"] = "10.3.0"
    assert "amdgpu_targets: got ['gfx1100']; allowed: a list that includes gfx1030" in problems(data)
    data["amdgpu_targets"] = ["gfx1030"]
    assert validate_profile(data).hsa_override == "10.3.0"


def test_no_override_for_a_supported_gpu(base: dict) -> None:
    data = with_change(base, "hsa_override_gfx_version", "10.3.0")
    data["amdgpu_targets"] = ["gfx1030", "gfx1100"]
    assert (
        "visible_devices[0]: got 0; allowed: GPUs that hsa_override_gfx_version 10.3.0 (gfx1030) fits; "
        "gpus index 0 is natively supported gfx1100" in problems(data)
    )


def test_override_equal_to_own_target_is_allowed(base: dict) -> None:
    # An iGPU gfx1103 beside a gfx1100 dGPU: 11.0.0 is what the iGPU needs and a no-op for the dGPU.
    data = with_change(base, "hsa_override_gfx_version", "11.0.0")
    igpu = dict(
        data["gpus"][0],
        index=1,
        name="AMD Radeon 780M",
        gfx="gfx1103",
        pci_device_id="0x15bf",
        pci_slot=None,
        render_minor=129,
        vram_total_bytes=536870912,
        integrated=True,
        supported=False,
    )
    data["gpus"].append(igpu)
    data["visible_devices"] = [0, 1]
    assert validate_profile(data).rocr_visible_devices == "0,1"


def test_no_override_when_no_gpu_needs_it(base: dict) -> None:
    data = with_change(base, "hsa_override_gfx_version", "11.0.0")
    expected = (
        "hsa_override_gfx_version: got '11.0.0'; allowed: null: every visible GPU is natively supported"
    )
    assert expected in problems(data)


def test_gpu_without_any_kernels_cannot_be_visible(base: dict) -> None:
    data = with_change(base, "gpus.0.gfx", "gfx906")
    data["gpus"][0]["supported"] = False
    assert "gpus index 0 is gfx906 (no kernels there)" in problems(data)


def test_duplicate_gpu_index(base: dict) -> None:
    data = copy.deepcopy(base)
    data["gpus"].append(copy.deepcopy(data["gpus"][0]))
    assert "gpus[1].index: got 0; allowed: an index no other GPU uses" in problems(data)


def test_quantized_kv_cache_needs_flash_attention(base: dict) -> None:
    data = with_change(base, "ollama.flash_attention", False)
    data["ollama"]["kv_cache_type"] = "q8_0"
    assert "ollama.kv_cache_type: got 'q8_0'; allowed: f16 unless flash_attention is true" in problems(data)


def test_force_needs_enabled(base: dict) -> None:
    data = with_change(base, "airllm.enabled", False)
    data["airllm"]["force"] = True
    assert "airllm.force: got True; allowed: false unless enabled is true" in problems(data)


@pytest.mark.parametrize("value", ["5m", "1h", "1h30m", "30s", "-1", "0", "300", -1, 0, 3600])
def test_keep_alive_accepts_ollama_values(base: dict, value: object) -> None:
    assert validate_profile(with_change(base, "ollama.keep_alive", value)).ollama.keep_alive == str(value)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:11434", "0.0.0.0:80", "[::1]:11434", "[::]:11434", "localhost:1", "ollama.example.org:65535"],
)
def test_host_accepts(base: dict, host: str) -> None:
    assert validate_profile(with_change(base, "ollama.host", host)).ollama.host == host


def test_trailing_slash_is_dropped(base: dict) -> None:
    assert (
        validate_profile(with_change(base, "ollama.models_dir", "/srv/ollama/")).ollama.models_dir
        == "/srv/ollama"
    )


# --- anything that reaches shell or systemd is limited to safe characters -----------------------------------

STRING_FIELDS = [
    "name",
    "gpus.0.name",
    "gpus.0.gfx",
    "gpus.0.pci_device_id",
    "gpus.0.pci_slot",
    "hsa_override_gfx_version",
    "ollama.host",
    "ollama.models_dir",
    "ollama.keep_alive",
    "airllm.cache_dir",
]
SAFE = re.compile(r"^[A-Za-z0-9 ._+/():\[\]-]*$")
NASTY = [
    "a\nb",
    "a'b",
    'a"b',
    "$HOME",
    "`id`",
    "a;b",
    "%h",
    "é",
    "a\\b",
    "\x00",
    "a\tb",
    "#x",
    "a|b",
    "a&b",
    "*",
]


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("nasty", NASTY, ids=repr)
def test_shell_and_systemd_metacharacters_are_rejected(base: dict, field: str, nasty: str) -> None:
    problems(with_change(base, field, f"/srv/x{nasty}y" if "dir" in field else f"x{nasty}y"))


GOOD_VALUES = {
    "name": "rx7900xtx",
    "gpus.0.name": "AMD Radeon",
    "gpus.0.gfx": "gfx1100",
    "gpus.0.pci_device_id": "0x744c",
    "gpus.0.pci_slot": "0000:03:00.0",
    "hsa_override_gfx_version": "11.0.0",
    "ollama.host": "[::1]:1",
    "ollama.models_dir": "/srv/x",
    "ollama.keep_alive": "5m",
    "airllm.cache_dir": "/srv/y",
}


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("suffix", ["\n", "\r", " ", "\n$(id)"], ids=repr)
def test_good_value_with_trailing_junk_is_rejected(base: dict, field: str, suffix: str) -> None:
    problems(with_change(base, field, GOOD_VALUES[field] + suffix))


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(STRING_FIELDS), value=st.text(max_size=40))
def test_any_string_is_rejected_or_safe(base: dict, field: str, value: str) -> None:
    try:
        profile = validate_profile(with_change(base, field, value))
    except UsageError as exc:
        assert "allowed" in exc.message
        return
    dumped = profile.model_dump(mode="json")
    node = dumped
    for part in field.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    assert SAFE.match(str(node)), node
    assert " " not in str(node) or field in {"gpus.0.name"}


# --- files --------------------------------------------------------------------------------------------------


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    profile = load_profile(default_profile_path())
    out = tmp_path / "p.yaml"
    dump_profile(profile, out, header="line one\nline two")
    text = out.read_text()
    assert text.startswith("# line one\n# line two\nschema_version: 1\n")
    assert "amdgpu_targets: [gfx1100]" in text
    assert load_profile(out) == profile
    assert [p.name for p in tmp_path.iterdir()] == ["p.yaml"]


def test_dump_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(UserError, match="cannot write profile"):
        dump_profile(load_profile(default_profile_path()), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(UserError, match="cannot write profile"):
        dump_profile(load_profile(default_profile_path()), tmp_path / "missing-dir" / "p.yaml")


def test_missing_file_and_bad_yaml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"profile .*nope\.yaml: no such file"):
        load_profile(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus: [\n")
    with pytest.raises(UsageError, match=r"profile .*bad\.yaml: line 2: not valid YAML: while parsing"):
        load_profile(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(UsageError, match=r"invalid profile .*empty\.yaml:\n  - \(top level\): got None"):
        load_profile(empty)


def test_packaging_dir_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PACKAGING_DIR_ENV, raising=False)
    assert packaging_dir() == REPO / "packaging"
    (tmp_path / "profiles").mkdir()
    monkeypatch.setenv(PACKAGING_DIR_ENV, str(tmp_path))
    assert default_profile_path() == tmp_path / "profiles" / "rx7900xtx.yaml"
    monkeypatch.setenv(PACKAGING_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(UserError, match="is not a directory"):
        packaging_dir()


def test_profile_is_the_public_model() -> None:
    assert set(Profile.model_fields) == {
        "schema_version",
        "name",
        "system",
        "gpus",
        "amdgpu_targets",
        "hsa_override_gfx_version",
        "visible_devices",
        "ollama",
        "airllm",
        "pins",
    }
