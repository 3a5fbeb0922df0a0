"""What the decode GEMV costs on GPU instruction sets, measured without a GPU: instructions per weight.

    python bench/isa.py                                   # every type, sm_90 (H100/H200), gfx1100, gfx942
    python bench/isa.py --types Q4_K,Q6_K --targets gfx1100

Triton compiles kernels ahead of time for a target it is told about, so this machine can build the GEMV of
every GGUF type for NVIDIA sm_90 (SASS, from the cubin through the cuobjdump Triton ships) and for AMD
gfx1100 (RX 7900 XTX, wave32) and gfx942 (MI300, wave64) (AMDGCN, from Triton's assembly), as Triton's
JIT would build it for a real model: every pointer and size divisible by 16, K a whole number of tiles.
Measured: the instructions of the kernel's inner loop (one pass over a BLOCK_N x BLOCK_K tile), divided by
the weight values one lane handles in a pass; for Q6_K and Q3_K also on the padded blocks of a resident
copy (kernels.resident_copy: 16-byte aligned, so the loads widen). Where a GEMV is limited by issuing
instructions rather than by memory (a GPU streams a 4.5-bit weight far faster than it runs tens of
instructions on it), fewer is proportionally faster. A static count: no timing, and no claim about the caches.
Human-readable lines first; the last stdout line is one JSON object
{"targets": [...], "instr_per_value": {target: {type: x}}, "instr_per_value_resident": {...},
"loop_instrs": {...}, "errors": {...}}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for real targets, not the CPU interpreter
ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("ollama_airllm") is None:  # a plain checkout
    sys.path.insert(0, str(ROOT / "runner"))

import triton  # noqa: E402
from ollama_airllm.kernels import GEMV_BLOCK_K, GEMV_BLOCK_N, QTYPES  # noqa: E402
from ollama_airllm.kernels.triton_quant import gemv_kernel  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

PROG = "bench/isa.py"
TARGETS = {"sm_90": GPUTarget("cuda", 90, 32), "gfx1100": GPUTarget("hip", "gfx1100", 32),
           "gfx942": GPUTarget("hip", "gfx942", 64)}  # fmt: skip
ARGS = {"w_ptr": "*u8", "x_ptr": "*bf16", "y_ptr": "*bf16", "kv_ptr": "*fp32", "N": "i32", "K": "i32",
        "row_bytes": "i32"}  # fmt: skip


def compile_gemv(name: str, target: GPUTarget, stride: int):
    """The GEMV kernel of type `name` on blocks `stride` bytes apart, compiled for `target` with the JIT's
    specialization."""
    q = QTYPES[name]
    consts = {"CODE": q.code, "QK": q.block, "BS": stride, "BLOCK_N": GEMV_BLOCK_N,
              "BLOCK_K": GEMV_BLOCK_K, "SUB": q.sub, "EVEN_K": True}  # fmt: skip
    names = gemv_kernel.arg_names
    signature = {a: ARGS.get(a, "constexpr") for a in names}
    div16 = {(names.index(a),): [["tt.divisibility", 16]] for a in ARGS}
    return triton.compile(ASTSource(gemv_kernel, signature, consts, div16), target=target)


def sass_loop(cubin: bytes) -> int:
    """Instructions from the target of the first backward branch to that branch (the main loop)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    ins = [(int(m[1], 16), m[2]) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    for addr, text in ins:
        hit = re.search(r"\bBRA\b.*0x([0-9a-f]+)", text)
        if hit and int(hit[1], 16) < addr:
            return sum(1 for a, _ in ins if int(hit[1], 16) <= a <= addr)
    raise RuntimeError("no loop found in the SASS")


def amdgcn_loop(asm: str) -> int:
    """Instructions of the basic blocks LLVM marks as inside a loop."""
    n, inside = 0, False
    for line in asm.splitlines():
        s = line.strip()
        if re.match(r"^\.LBB\w+:", s):
            inside = "Loop" in s
        elif inside and s and not s.startswith((";", ".", "//")):
            n += 1
    if not n:
        raise RuntimeError("no loop found in the AMDGCN assembly")
    return n


def measure(name: str, target: str, stride: int) -> tuple[int, float]:
    """(loop instructions, instructions per weight value per lane) of type `name` on `target`."""
    t = TARGETS[target]
    k = compile_gemv(name, t, stride)
    n = sass_loop(k.asm["cubin"]) if t.backend == "cuda" else amdgcn_loop(k.asm["amdgcn"])
    per_lane = GEMV_BLOCK_N * GEMV_BLOCK_K / (k.metadata.num_warps * t.warp_size)
    return n, n / per_lane


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{PROG}: {message} (see --help)\n")


def _names(text: str, allowed, what: str, p: _Parser) -> list[str]:
    names = [x for x in text.split(",") if x]
    bad = [x for x in names if x not in allowed]
    if bad or not names:
        p.error(f"--{what} {text!r}: {', '.join(bad) or 'empty'} not one of {', '.join(allowed)}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog=PROG, description="Instructions per weight of the GEMV kernels on GPU targets.")
    p.add_argument("--types", default=",".join(QTYPES), help="comma-separated GGUF types (default: all)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: " + ", ".join(TARGETS))
    a = p.parse_args(argv)
    types, targets = _names(a.types, QTYPES, "types", p), _names(a.targets, TARGETS, "targets", p)
    per_value: dict[str, dict[str, float]] = {t: {} for t in targets}
    resident: dict[str, dict[str, float]] = {t: {} for t in targets}
    loops: dict[str, dict[str, int]] = {t: {} for t in targets}
    errors: dict[str, str] = {}
    for target in targets:
        for name in types:
            q = QTYPES[name]
            try:
                loops[target][name], per_value[target][name] = measure(name, target, q.block_bytes)
                if q.resident_stride:
                    resident[target][name] = measure(name, target, q.resident_stride)[1]
            except Exception as e:  # a target whose toolchain is missing here: say so, go on
                errors[f"{target}/{name}"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        line = ", ".join(f"{n} {v:.1f}" for n, v in per_value[target].items())
        padded = ", ".join(f"{n} {v:.1f}" for n, v in resident[target].items())
        print(f"{target}: instructions per weight value per lane: {line}"
              + (f"; resident (padded) copies: {padded}" if padded else ""))  # fmt: skip
    for what, why in errors.items():
        print(f"FAILED {what}: {why}")
    result = {"targets": targets, "triton": triton.__version__, "instr_per_value": per_value,
              "instr_per_value_resident": resident, "loop_instrs": loops, "errors": errors}  # fmt: skip
    print(json.dumps(result), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
