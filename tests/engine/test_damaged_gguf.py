"""Damaged GGUF metadata (issue 13, item 2): one clear line naming the file and the key, never a traceback,
a hang or an unbounded allocation; plus a bounded fuzz run over metadata mutations and header byte flips.

Damaged files are the tiny model rewritten with gguf's own writer (`_rewrite`) or patched in place.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from gguf import GGUFReader, GGUFWriter
from gguf import GGUFValueType as T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ollama_airllm.engine import Engine, EngineConfig
from ollama_airllm.errors import UserError

CPU = EngineConfig(device="cpu")
ARCH = "llama"
GIB = 1 << 30


def _rewrite(src: Path, dst: Path, values: dict | None = None, drop=(), tensors: dict | None = None) -> Path:
    """Copy the GGUF `src` to `dst` with metadata `values` ({key: (value, type, sub_type)}) set, the keys
    in `drop` left out, and tensors replaced, added or (None) left out as `tensors` says ({name: array})."""
    values, tensors = values or {}, tensors or {}
    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents())
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in drop or key in values or key == "general.architecture":
            continue
        w.add_key_value(key, f.contents(), f.types[0], f.types[-1] if f.types[0] == T.ARRAY else None)
    for key, (value, vtype, sub) in values.items():
        w.add_key_value(key, value, vtype, sub)
    for t in r.tensors:
        if t.name not in tensors:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    for name, array in tensors.items():
        if array is not None:
            w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _value_offset(path: Path, key: str) -> int:
    """Where the value of metadata `key` starts in the file (after its key and type)."""
    f = GGUFReader(path).fields[key]
    return f.offset + 8 + len(key.encode()) + 4


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@contextlib.contextmanager
def bounded(seconds: float = 60, extra: int = 4 * GIB):
    """Fail (MemoryError / TimeoutError) instead of eating the machine or hanging: caps this process's
    address space at its current size + `extra` and raises TimeoutError after `seconds`. A timer already
    running (pytest-timeout's) is put back afterwards with the time it had left."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vsize = int(f.read().split()[0]) * resource.getpagesize()
    limit = vsize + extra if hard == resource.RLIM_INFINITY else min(vsize + extra, hard)

    def on_alarm(*_):
        raise TimeoutError(f"still running after {seconds}s")

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.monotonic()
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(old_delay - (time.monotonic() - t0), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def _load_error(path: Path) -> str:
    with bounded(), pytest.raises(UserError) as e:
        Engine.load(path, CPU)
    msg = e.value.message
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


@pytest.fixture(autouse=True)
def _cpu_only(monkeypatch):
    """In-process loads run under an address-space cap: keep a GPU runtime (and its VA reservations) out."""
    monkeypatch.delenv("OLLAMA_AIRLLM_DEVICE", raising=False)


@pytest.fixture(scope="module")
def good(tiny_gguf) -> Path:
    return tiny_gguf("llama", "F32")


@pytest.fixture(scope="module")
def n_vocab(good) -> int:
    return len(GGUFReader(good).fields["tokenizer.ggml.tokens"].data)


# --- one test per defect --------------------------------------------------------------------------------


def test_huge_block_count_is_refused_without_allocating(tmp_path, good):
    """A 4-byte header change (block_count = 1e9) made the loader allocate 1e9 layer dicts."""
    p = tmp_path / "sha256-blocks"
    p.write_bytes(good.read_bytes())
    _patch(p, _value_offset(p, f"{ARCH}.block_count"), struct.pack("<I", 10**9))
    msg = _load_error(p)
    assert f"metadata {ARCH}.block_count is 1000000000" in msg
    assert "but tensor 'blk.2.attn_norm.weight' is missing" in msg


def _cases(n_vocab: int) -> dict[str, tuple[dict, tuple, str]]:
    """name -> (values to set, keys to drop, expected message part)."""
    a = f"{ARCH}.attention"
    return {
        "head_count-0": (
            {f"{a}.head_count": (0, T.UINT32, None)},
            (),
            f"metadata {a}.head_count is 0; must be a positive integer",
        ),
        "head_count_kv-0": (
            {f"{a}.head_count_kv": (0, T.UINT32, None)},
            (),
            f"metadata {a}.head_count_kv is 0; must be a positive integer",
        ),
        "head_count_kv-not-divisor": (
            {f"{a}.head_count_kv": (3, T.UINT32, None)},
            (),
            f"metadata {a}.head_count_kv is 3; must be a divisor of {a}.head_count (4)",
        ),
        "embedding_length-array": (
            {f"{ARCH}.embedding_length": ([64, 64], T.ARRAY, T.UINT32)},
            (),
            f"metadata {ARCH}.embedding_length is an array (2 values); must be a positive integer",
        ),
        "embedding_length-string": (
            {f"{ARCH}.embedding_length": ("64", T.STRING, None)},
            (),
            f"metadata {ARCH}.embedding_length is a string ('64'); must be a positive integer",
        ),
        "embedding_length-not-multiple": (
            {f"{ARCH}.embedding_length": (66, T.UINT32, None)},
            (f"{a}.key_length",),
            f"metadata {ARCH}.embedding_length is 66; must be a multiple of {a}.head_count (4)",
        ),
        "context_length-negative": (
            {f"{ARCH}.context_length": (-5, T.INT32, None)},
            (),
            f"metadata {ARCH}.context_length is -5; must be an integer from 1 to",
        ),
        "key_length-odd": (
            {f"{a}.key_length": (15, T.UINT32, None)},
            (),
            "the attention head dimension is 15; rotary embedding needs an even one",
        ),
        "rms_eps-string": (
            {f"{a}.layer_norm_rms_epsilon": ("1e-5", T.STRING, None)},
            (),
            f"metadata {a}.layer_norm_rms_epsilon is a string ('1e-5'); must be a positive number",
        ),
        "feed_forward_length-missing": (
            {},
            (f"{ARCH}.feed_forward_length",),
            f"metadata key '{ARCH}.feed_forward_length' is missing",
        ),
        "tokens-short": (
            {"tokenizer.ggml.tokens": (["a", "b", "c"], T.ARRAY, T.STRING)},
            (),
            f"metadata tokenizer.ggml.tokens has 3 entries, but token_embd.weight has {n_vocab} rows",
        ),
        "token_type-short": (
            {"tokenizer.ggml.token_type": ([1, 1], T.ARRAY, T.INT32)},
            (),
            f"metadata tokenizer.ggml.token_type has 2 entries; must have one per token ({n_vocab})",
        ),
        "scores-short": (
            {"tokenizer.ggml.scores": ([0.0], T.ARRAY, T.FLOAT32)},
            (),
            f"metadata tokenizer.ggml.scores has 1 entries; must have one per token ({n_vocab})",
        ),
        "tokens-not-strings": (
            {"tokenizer.ggml.tokens": (list(range(n_vocab)), T.ARRAY, T.INT32)},
            (),
            "metadata tokenizer.ggml.tokens is an array",
        ),
        "merges-garbage": (
            {"tokenizer.ggml.merges": (["nospace"], T.ARRAY, T.STRING)},
            (),
            "metadata tokenizer.ggml.merges[0] is 'nospace'; must be 'LEFT RIGHT'",
        ),
        "merges-unknown-tokens": (
            {"tokenizer.ggml.merges": (["zzzq qqqz"], T.ARRAY, T.STRING)},
            (),
            "the tokenizer metadata cannot be used: ",
        ),
        "bos-out-of-range": (
            {"tokenizer.ggml.bos_token_id": (n_vocab + 5, T.UINT32, None)},
            (),
            f"metadata tokenizer.ggml.bos_token_id is {n_vocab + 5}; must be an integer from 0 to "
            f"{n_vocab - 1}",
        ),
        "eos-out-of-range": (
            {"tokenizer.ggml.eos_token_id": (n_vocab, T.UINT32, None)},
            (),
            f"metadata tokenizer.ggml.eos_token_id is {n_vocab}; must be an integer from 0 to {n_vocab - 1}",
        ),
        "chat_template-int": (
            {"tokenizer.chat_template": (7, T.UINT32, None)},
            (),
            "metadata tokenizer.chat_template is 7; must be a string",
        ),
    }


CASES = list(_cases(0))


@pytest.mark.parametrize("case", CASES)
def test_damaged_metadata_is_one_clear_line(tmp_path, good, n_vocab, case):
    values, drop, expected = _cases(n_vocab)[case]
    p = _rewrite(good, tmp_path / f"sha256-{case}", values, drop)
    assert expected in _load_error(p)


def _f32(*shape: int) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


@pytest.mark.parametrize(
    ("arch", "tensors", "expected"),
    [
        ("llama", {"blk.1.ffn_up.weight": None}, "tensor 'blk.1.ffn_up.weight' is missing"),
        ("llama", {"output_norm.weight": _f32(63)}, "output_norm.weight has shape [63], expected [64]"),
        ("llama", {"token_embd.weight": _f32(64)}, "token_embd.weight has shape [64], expected [*, 64]"),
        ("llama", {"blk.0": _f32(4)}, "tensor name 'blk.0' is not of the form blk.N.NAME"),
        (
            "qwen3",
            {"blk.0.attn_k_norm.weight": None},
            "block 0 has only one of attn_q_norm.weight and attn_k_norm.weight",
        ),
    ],
)
def test_damaged_tensors_are_named(tmp_path, tiny_gguf, arch, tensors, expected):
    p = _rewrite(tiny_gguf(arch, "F32"), tmp_path / "sha256-tensors", tensors=tensors)
    assert expected in _load_error(p)


def test_huge_array_count_is_bounded_by_the_file(tmp_path, good):
    """gguf's reader loops (and allocates) once per claimed element, even past the end of the file:
    token_type as an array of 2^60 uint8 made it run out of memory."""
    p = tmp_path / "sha256-count"
    p.write_bytes(good.read_bytes())
    _patch(p, _value_offset(p, "tokenizer.ggml.token_type"), struct.pack("<IQ", int(T.UINT8), 1 << 60))
    assert "file is truncated inside the header" in _load_error(p)


@pytest.mark.parametrize("kind", ["fifo", "character device"])
def test_special_files_are_refused_without_opening(tmp_path, kind):
    if kind == "fifo":
        p = tmp_path / "sha256-fifo"
        os.mkfifo(p)  # nothing ever writes: opening it for reading would block for good
    else:
        p = Path("/dev/null")
    assert _load_error(p) == f"{p}: not a regular file ({kind})"


# --- the real runner process ----------------------------------------------------------------------------


def _runner(model: Path, rss_limit: int = 3 * GIB, timeout: float = 180) -> tuple[int | None, str, int]:
    """Run the real runner on `model`; kill it once its RSS passes `rss_limit` or after `timeout` s.
    Returns (exit status, output, peak RSS). RSS, not address space: a GPU runtime may reserve much VA."""
    port = str(_free_port())
    cmd = [sys.executable, "-m", "ollama_airllm.server.main", "--model", str(model), "--port", port]
    env = {**os.environ, "OLLAMA_AIRLLM_DEVICE": "cpu"}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        peak, deadline = 0, time.monotonic() + timeout
        try:
            while proc.poll() is None and peak <= rss_limit and time.monotonic() < deadline:
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, psutil.Process(proc.pid).memory_info().rss)
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        out.seek(0)
        return proc.returncode, out.read().decode(errors="replace"), peak


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runner_exits_1_with_one_line(tmp_path, good, n_vocab):
    """block_count = 1e9 (with RSS watched), a BOS id outside the vocabulary, a FIFO."""
    blocks = tmp_path / "sha256-blocks"
    blocks.write_bytes(good.read_bytes())
    _patch(blocks, _value_offset(blocks, f"{ARCH}.block_count"), struct.pack("<I", 10**9))
    bos = _rewrite(good, tmp_path / "sha256-bos", {"tokenizer.ggml.bos_token_id": (n_vocab, T.UINT32, None)})
    fifo = tmp_path / "sha256-fifo"
    os.mkfifo(fifo)
    for model, problem in (
        (blocks, f"metadata {ARCH}.block_count is 1000000000"),
        (bos, "metadata tokenizer.ggml.bos_token_id is"),
        (fifo, "not a regular file (fifo)"),
    ):
        rc, out, peak = _runner(model)
        assert peak <= 3 * GIB, f"RSS reached {peak >> 20} MiB:\n{out}"
        assert rc == 1, out
        assert "Traceback" not in out, out
        lines = [ln for ln in out.splitlines() if "error loading model" in ln]
        assert len(lines) == 1 and f"error loading model: {model}: {problem}" in lines[0], out


# --- bounded fuzz ---------------------------------------------------------------------------------------

_INT_TYPES = (T.UINT8, T.INT8, T.UINT16, T.INT16, T.UINT32, T.INT32, T.UINT64, T.INT64)
_RANGES = {
    T.UINT8: (0, 2**8 - 1),
    T.INT8: (-(2**7), 2**7 - 1),
    T.UINT16: (0, 2**16 - 1),
    T.INT16: (-(2**15), 2**15 - 1),
    T.UINT32: (0, 2**32 - 1),
    T.INT32: (-(2**31), 2**31 - 1),
    T.UINT64: (0, 2**64 - 1),
    T.INT64: (-(2**63), 2**63 - 1),
}


@st.composite
def _int_value(draw):
    vtype = draw(st.sampled_from(_INT_TYPES))
    lo, hi = _RANGES[vtype]
    special = [v for v in (0, 1, -1, 2, 3, 7, 64, 2**31 - 1, 2**32 - 1, 2**63 - 1) if lo <= v <= hi]
    return draw(st.sampled_from(special) | st.integers(lo, hi)), vtype, None


_VALUE = st.one_of(
    _int_value(),
    st.tuples(st.floats(allow_nan=True, allow_infinity=True, width=32), st.just(T.FLOAT32), st.none()),
    st.tuples(st.text(max_size=8), st.just(T.STRING), st.none()),
    st.tuples(st.booleans(), st.just(T.BOOL), st.none()),
    st.tuples(st.lists(st.integers(0, 300), min_size=1, max_size=4), st.just(T.ARRAY), st.just(T.INT32)),
    st.tuples(st.lists(st.text(max_size=4), min_size=1, max_size=4), st.just(T.ARRAY), st.just(T.STRING)),
)


def _fields(path: Path) -> dict:
    return {k: f for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def _truncated(f, n: int):
    """The array field `f` cut to its first `n` elements, as (value, type, sub_type) (gguf's writer
    cannot write an empty array)."""
    return f.contents()[:n], T.ARRAY, f.types[-1]


def _check_load(path: Path) -> None:
    """Engine.load either works (and the loaded tokenizer answers for its special ids) or raises UserError."""
    with bounded():
        try:
            eng = Engine.load(path, CPU)
        except UserError as e:
            assert e.message.startswith(f"{path}: ") and "\n" not in e.message, e.message
            return
    tok = eng.tokenizer
    for i in (tok.bos_id, tok.eos_id, *tok.eog_ids):
        if i is not None:
            tok.token_to_piece(i, special=True)
    tok.encode("Hello world", add_special=True, parse_special=True)
    assert eng.info.chat_template is None or isinstance(eng.info.chat_template, str)
    eng.close()


# Both fuzz runs: bounded, no stored examples, the `good` file fixture shared by every example.
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data())
def test_fuzz_metadata_values(tmp_path, good, data):
    fields = _fields(good)
    key = data.draw(st.sampled_from(sorted(fields)), label="key")
    f = fields[key]
    hows = ["value", "drop", "truncate"] if f.types[0] == T.ARRAY else ["value", "drop"]
    how = data.draw(st.sampled_from(hows), label="how")
    values, drop = {}, ()
    if how == "value":
        values[key] = data.draw(_VALUE, label="value")
    elif how == "drop":
        drop = (key,)
    else:
        values[key] = _truncated(f, data.draw(st.integers(1, max(len(f.data) - 1, 1)), label="n"))
    p = tmp_path / "sha256-fuzz"
    _rewrite(good, p, values, drop)
    _check_load(p)


@FUZZ
@given(data=st.data())
def test_fuzz_header_bytes(tmp_path, good, data):
    raw = bytearray(good.read_bytes())
    header_end = GGUFReader(good).data_offset
    for _ in range(data.draw(st.integers(1, 4), label="n_flips")):
        pos = data.draw(st.integers(0, header_end - 1) | st.sampled_from(_count_offsets(good)), label="pos")
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
    p = tmp_path / "sha256-flip"
    p.write_bytes(bytes(raw))
    _check_load(p)


_COUNTS: dict[Path, list[int]] = {}


def _count_offsets(path: Path) -> list[int]:
    """Bytes of the header's counts and lengths (tensor/kv counts, array lengths, high bytes of u64s):
    flipping these is what makes a reader allocate per count."""
    if path not in _COUNTS:
        offs = [8 + 7, 16 + 7, 8 + 3, 16 + 3]
        for key, f in _fields(path).items():
            if f.types[0] == T.ARRAY:
                start = _value_offset(path, key) + 4
                offs += [start + 3, start + 7]
        _COUNTS[path] = offs
    return _COUNTS[path]


def test_messages_have_no_raw_reprs(tmp_path, good):
    """Error lines name keys plainly (no Python type names such as 'GGUFValueType')."""
    p = _rewrite(good, tmp_path / "sha256-x", {f"{ARCH}.block_count": ("x", T.STRING, None)})
    msg = _load_error(p)
    assert not re.search(r"GGUFValueType|<class|Traceback", msg), msg
