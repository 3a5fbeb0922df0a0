"""Profile hardening (issue 13, items 1 and 6): dedicated data directories, strict YAML and schema_version.

Ends with bounded fuzz runs: random YAML and random field values give a valid profile or one UsageError that
names the problem, never a traceback; random paths follow the data-directory rules.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ollama_airllm.errors import UsageError
from ollama_airllm.profile import (
    MAX_YAML_DEPTH,
    Allowed,
    Profile,
    check_data_dir,
    default_profile_path,
    profile_from_yaml,
    validate_profile,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEFAULT_TEXT = default_profile_path().read_text()
BASE = yaml.safe_load(DEFAULT_TEXT)


def refusal(text: str) -> str:
    with pytest.raises(UsageError) as info:
        profile_from_yaml(text, "p.yaml")
    assert info.value.exit_code == 2
    return info.value.message


def with_dirs(models: str, cache: str = "/var/lib/ollama/airllm") -> dict:
    data = copy.deepcopy(BASE)
    data["ollama"]["models_dir"], data["airllm"]["cache_dir"] = models, cache
    return data


# --- item 1: data directories -------------------------------------------------------------------------------

REFUSED = [
    ("/var/lib", "/var/lib is shared"),
    ("/var/cache", "/var/cache is outside those places"),
    ("/var/log/x", "/var/log/x is outside those places"),
    ("/home/u", "/home/u is shared"),
    ("/root/x", "/root/x is outside those places"),
    ("/opt/rocm", "/opt/rocm is outside those places"),
    ("/srv", "use e.g. /srv/ollama"),
    ("/mnt/data", "/mnt/data is shared"),
    ("/media/usb", "use e.g. /media/usb/ollama"),
    ("/run/media/me/CACHE1", "use e.g. /run/media/me/CACHE1/ollama"),
    ("/run/media/me", "/run/media/me is shared"),
    ("/home/u/.config/systemd", "'.config' is a hidden"),
    ("/var/lib/ollama2", "/var/lib/ollama2 is outside those places"),
    ("/usr/lib/ollama", "/usr/lib/ollama is outside those places"),
]


@pytest.mark.parametrize("field", ["ollama.models_dir", "airllm.cache_dir"])
@pytest.mark.parametrize(("path", "reason"), REFUSED)
def test_system_directories_are_refused_with_the_reason(field: str, path: str, reason: str) -> None:
    data = with_dirs(path) if field == "ollama.models_dir" else with_dirs("/var/lib/ollama", path)
    with pytest.raises(UsageError) as info:
        validate_profile(data, "p.yaml")
    message = info.value.message
    assert f"{field}: got {path!r}; allowed: a directory dedicated to Ollama" in message
    assert "/run/media/USER/DISK/DIR/..." in message and "; refused because " in message
    assert reason in message.split("; refused because ")[1]


@pytest.mark.parametrize(
    "path",
    ["/var/lib/ollama", "/var/lib/ollama/models", "/srv/ollama", "/srv/ai/models", "/mnt/data/ollama",
     "/media/usb/llm/models", "/run/media/me/CACHE1/airllm", "/home/me/models", "/home/me/ai/ollama"],
)  # fmt: skip
def test_dedicated_directories_are_accepted(path: str) -> None:
    profile = validate_profile(with_dirs(path, f"{path}/airllm"))
    assert (profile.ollama.models_dir, profile.airllm.cache_dir) == (path, f"{path}/airllm")


# --- item 6: YAML and schema_version ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["true", "1.0", "'1'", "[1]", "1e0"])
def test_schema_version_must_be_the_integer_1(value: str) -> None:
    message = refusal(DEFAULT_TEXT.replace("schema_version: 1\n", f"schema_version: {value}\n"))
    assert "schema_version: got" in message and "allowed: 1 (the integer" in message


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    text = DEFAULT_TEXT + "ollama:\n  host: 0.0.0.0:11434\n"
    first = DEFAULT_TEXT.splitlines().index("ollama:") + 1
    last = len(text.splitlines()) - 1
    assert refusal(text) == f"profile p.yaml: line {last}: duplicate key 'ollama' (first at line {first})"


def test_duplicate_keys_in_a_flow_mapping_are_refused() -> None:
    assert "duplicate key 'host'" in refusal(DEFAULT_TEXT + "x: {host: a, host: b}\n")


def test_deep_nesting_is_one_line_not_a_traceback() -> None:
    message = refusal("a: " + "[" * 10000 + "]" * 10000 + "\n")
    expected = f"profile p.yaml: line 1: nested deeper than {MAX_YAML_DEPTH} levels (a profile needs 4)"
    assert message == expected


def test_deep_block_nesting_is_refused() -> None:
    text = "".join(" " * i + "k:\n" for i in range(MAX_YAML_DEPTH + 5))
    assert "nested deeper than" in refusal(text)


def test_alias_bomb_is_refused_at_the_first_anchor() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    message = refusal("\n".join(lines) + "\n")
    assert message == "profile p.yaml: line 1: "\
        "anchors and aliases (&name, *name) are not allowed in a profile"


def test_aliases_tags_and_merge_keys_are_refused() -> None:
    assert "anchors and aliases" in refusal(DEFAULT_TEXT.replace("name: rx7900xtx", "name: &n rx7900xtx"))
    assert "merge keys (<<)" in refusal(DEFAULT_TEXT + "x: {<<: {a: 1}}\n")
    message = refusal(DEFAULT_TEXT.replace("schema_version: 1", "schema_version: !!int"))
    assert message == "profile p.yaml: line 3: tags (tag:yaml.org,2002:int) are not allowed in a profile; " \
        "write plain values"


def test_oversized_profile_and_huge_integer_are_refused(tmp_path) -> None:
    assert "larger than 256 KiB" in refusal("#" * (300 * 1024))
    huge = DEFAULT_TEXT.replace("schema_version: 1", "schema_version: " + "9" * 5000)
    assert "not valid YAML" in refusal(huge)


def test_render_cli_exits_2_on_a_duplicate_key(tmp_path) -> None:
    from click.testing import CliRunner
    from ollama_airllm.cli import main

    profile = tmp_path / "dup.yaml"
    profile.write_text(DEFAULT_TEXT + "name: other\n")
    result = CliRunner().invoke(main, ["render", "--profile", str(profile), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "duplicate key 'name'" in result.stderr, result.output
    assert not (tmp_path / "out").exists()


# --- bounded fuzz runs --------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=30), st.sampled_from(["/srv/x", "/var/lib", "gfx1100", "0x744c", "1", "-1"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
YAML_BITS = st.sampled_from(
    [": ", "- ", "\n", "  ", "[", "]", "{", "}", ",", "&a ", "*a", "<<: ", "!!int ", "!!str ", "? ", "#",
     "'", '"', "|", ">", "---\n", "...\n", "\t", "%YAML 1.1\n", "name", "gpus", "schema_version", "1", "x"]
)  # fmt: skip
LOCAL_FIELDS = [
    "name", "schema_version", "ollama.host", "ollama.models_dir", "ollama.context_length",
    "ollama.keep_alive", "ollama.num_parallel", "airllm.cache_dir", "airllm.compression",
    "airllm.vram_reserve_mib", "pins.ollama",
]  # fmt: skip


def _outcome(text: str) -> Profile | str:
    try:
        return profile_from_yaml(text, "fuzz.yaml")
    except UsageError as exc:
        assert exc.exit_code == 2
        assert exc.message.startswith(("profile fuzz.yaml: ", "invalid profile fuzz.yaml:\n")), exc.message
        return exc.message


@FUZZ
@given(st.lists(YAML_BITS, max_size=40).map("".join))
def test_fuzz_random_yaml_text_is_a_profile_or_a_usage_error(text: str) -> None:
    _outcome(text)


@FUZZ
@given(st.sampled_from(LOCAL_FIELDS), VALUES)
def test_fuzz_random_field_values_name_the_field(field: str, value: object) -> None:
    data = copy.deepcopy(BASE)
    *parents, last = field.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    outcome = _outcome(yaml.safe_dump(data))
    if isinstance(outcome, str):
        assert f"  - {field}" in outcome, outcome


@FUZZ
@given(VALUES)
def test_fuzz_random_documents_never_crash(value: object) -> None:
    _outcome(yaml.safe_dump(value))


PART = st.one_of(
    st.sampled_from(["var", "lib", "ollama", "srv", "mnt", "media", "run", "home", "me", "opt", "root", "etc",
                     ".", "..", ".hidden", "usr", "tmp"]),
    st.from_regex(r"[A-Za-z0-9._+-]{1,6}", fullmatch=True),
    st.text(max_size=4),
)  # fmt: skip
ROOTS = {("var", "lib", "ollama"): 0, ("srv",): 1, ("mnt",): 2, ("media",): 2, ("run", "media"): 3,
         ("home",): 2}  # fmt: skip


@FUZZ
@given(st.lists(PART, min_size=0, max_size=6), st.booleans())
def test_fuzz_path_rules(parts: list[str], slash: bool) -> None:
    path = "/" + "/".join(parts) + ("/" if slash and parts else "")
    try:
        got = check_data_dir(path)
    except Allowed as exc:
        assert "refused because" in str(exc)
        return
    assert got == path.rstrip("/") and re.fullmatch(r"(/[A-Za-z0-9._+-]+)+", got)
    assert not any(part.startswith(".") for part in parts)
    assert any(tuple(parts[: len(r)]) == r and len(parts) >= len(r) + n for r, n in ROOTS.items()), parts
    assert check_data_dir(got + "/sub") == got + "/sub"
