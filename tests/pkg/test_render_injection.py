"""Property: any string in any profile field is either rejected with a clear error, or renders files that pass
`bash -n` and, when the PKGBUILD and .install are sourced and run, execute no injected command."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ollama_airllm.errors import UsageError
from ollama_airllm.pkggen import render as pkgrender
from ollama_airllm.profile import default_profile_path, validate_profile

BASE = yaml.safe_load(default_profile_path().read_text())
MARKER_DIR = Path(tempfile.mkdtemp(prefix="oar-inject-"))
MARKER = MARKER_DIR / "PWNED"
ENV_LINE = re.compile(r"^[A-Z_][A-Z0-9_]*=[A-Za-z0-9_./:,+@\[\]-]*$")

FIELDS = [
    ("name",), ("gpus", 0, "name"), ("gpus", 0, "gfx"), ("gpus", 0, "pci_device_id"), ("gpus", 0, "pci_slot"),
    ("amdgpu_targets", 0), ("hsa_override_gfx_version",), ("visible_devices", 0), ("ollama", "host"),
    ("ollama", "models_dir"), ("ollama", "context_length"), ("ollama", "kv_cache_type"),
    ("ollama", "keep_alive"), ("airllm", "compression"), ("airllm", "cache_dir"), ("airllm", "enabled"),
    ("pins", "ollama"), ("schema_version",), ("gpus", 0, "render_minor"), ("ollama", "num_parallel"),
    ("airllm", "vram_reserve_mib"), ("system", "ram_bytes"),
]  # fmt: skip

_m = str(MARKER)
PAYLOADS = [
    f"$(touch {_m})", f"`touch {_m}`", f"; touch {_m}", f"\ntouch {_m}\n", f"'; touch {_m}; '",
    f'"; touch {_m}; "', f"x$(touch${{IFS}}{_m})", f"gfx1100$(touch {_m})", f"/var/lib/ollama/$(touch {_m})",
    f"127.0.0.1:11434\ntouch {_m}", f"rx7900xtx\ntouch {_m}", f"/srv/a;touch {_m}", f"5m$(touch {_m})",
    f"%n$(touch {_m})", f"\\\ntouch {_m}", f"${{x:-$(touch {_m})}}",
]  # fmt: skip
# Odd values that are valid for their field, so the render path is exercised too.
VALID_ODD = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True),
    st.from_regex(r"/srv/[A-Za-z0-9._+-]{1,12}(/[A-Za-z0-9._+-]{1,8})?", fullmatch=True),
    st.sampled_from(["1h30m", "-1", "0", "q8_0", "8bit", "[::1]:11434", "localhost:1", "10.3.0", "gfx1201"]),
)
_PATH = st.from_regex(r"/srv/[A-Za-z0-9._+-]{1,12}(/[A-Za-z0-9._+-]{1,8})?", fullmatch=True)
VALID_FOR = {
    ("name",): st.from_regex(r"[a-z0-9][a-z0-9._-]{0,30}", fullmatch=True),
    ("gpus", 0, "name"): st.from_regex(
        r"[A-Za-z0-9]([A-Za-z0-9 ._+/()-]{0,20}[A-Za-z0-9._+/()-])?", fullmatch=True
    ),
    ("gpus", 0, "pci_slot"): st.from_regex(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", fullmatch=True),
    ("gpus", 0, "pci_device_id"): st.from_regex(r"0x[0-9a-f]{4}", fullmatch=True),
    ("ollama", "host"): st.one_of(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{1,5})?:[1-9][0-9]{0,3}", fullmatch=True),
        st.sampled_from(["0.0.0.0:11434", "[::1]:11434", "[::]:8080", "127.0.0.2:1"]),
    ),
    ("ollama", "models_dir"): _PATH,
    ("airllm", "cache_dir"): _PATH,
    ("ollama", "keep_alive"): st.from_regex(
        r"([0-9]{1,3}h)?([0-9]{1,3}m)?[0-9]{1,3}s|-1|[0-9]{1,6}", fullmatch=True
    ),
    ("ollama", "kv_cache_type"): st.sampled_from(["f16", "q8_0", "q4_0"]),
    ("airllm", "compression"): st.sampled_from(["none", "8bit", "4bit"]),
}


@st.composite
def field_and_value(draw: st.DrawFn) -> tuple[tuple, object]:
    field = draw(st.sampled_from(FIELDS))
    valid = VALID_FOR.get(field, VALID_ODD)
    value = draw(st.one_of(st.sampled_from(PAYLOADS), st.text(max_size=40), valid, valid))
    return field, value


@pytest.fixture(scope="module", autouse=True)
def _remove_marker_dir():
    yield
    shutil.rmtree(MARKER_DIR, ignore_errors=True)


def _set(data: dict, path: tuple, value: object) -> None:
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def _check_rendered(files: dict[str, pkgrender.RenderedFile]) -> None:
    with tempfile.TemporaryDirectory(prefix="oar-render-") as tmp:
        out = Path(tmp)
        for name, rendered in files.items():
            (out / name).write_bytes(rendered.data)
        for name in ("PKGBUILD", "ollama-airllm-rocm.install", "airllm-runner.in", "ollama-airllm.in"):
            syntax = subprocess.run(["bash", "-n", name], cwd=out, capture_output=True, text=True)
            assert syntax.returncode == 0, f"{name}: {syntax.stderr}"
        # Source both the way makepkg and pacman do, and run the install hooks.
        script = (
            "source ./PKGBUILD && source ./ollama-airllm-rocm.install"
            " && post_install && post_upgrade && pre_remove"
        )
        run = subprocess.run(["bash", "-c", script], cwd=out, capture_output=True, text=True, timeout=30)
        assert run.returncode == 0, run.stderr
    assert not MARKER.exists(), "an injected command ran"
    env_lines = [ln for ln in files["ollama.env"].text.splitlines() if ln and not ln.startswith("#")]
    assert all(ENV_LINE.fullmatch(ln) for ln in env_lines), env_lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=field_and_value(), variant=st.sampled_from(pkgrender.VARIANTS))
def test_any_string_in_any_field_is_rejected_or_rendered_safely(case, variant):
    field, value = case
    data = copy.deepcopy(BASE)
    _set(data, field, value)
    try:
        profile = validate_profile(data, "fuzzed profile")
    except UsageError as exc:
        message = exc.format_message()
        assert message.startswith("invalid profile fuzzed profile:") and "allowed" in message
        event("rejected")
        return
    event("rendered")
    _check_rendered(pkgrender.render_package(profile, variant))


def test_payloads_reach_no_shell_even_through_valid_looking_prefixes():
    """Every payload in every field, exhaustively (the cases hypothesis might not draw)."""
    rendered = 0
    for field in FIELDS:
        for payload in PAYLOADS:
            data = copy.deepcopy(BASE)
            _set(data, field, payload)
            try:
                profile = validate_profile(data, "payload")
            except UsageError:
                continue
            _check_rendered(pkgrender.render_package(profile))
            rendered += 1
    assert not MARKER.exists()
    assert rendered == 0, "a shell payload passed profile validation"
