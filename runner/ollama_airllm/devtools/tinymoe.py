"""Tiny random mixture-of-experts models (Qwen3-MoE, Mixtral) converted by llama.cpp's own converter.

    python -m ollama_airllm.devtools.tinymoe --arch qwen3moe -o moe.gguf [--qtype Q4_K_M]

`make_hf_moe` saves a random Qwen3MoeForCausalLM or MixtralForCausalLM with the tiny tokenizer; `build`
converts it with llama.cpp's convert_hf_to_gguf.py and quantizes it with the real llama-quantize
(devtools/llamacpp.py). `reference_model` is transformers' model class with the weights
gguf-py dequantizes from a GGUF: for Mixtral, which transformers' own `gguf_file=` loader reads as a dense
Llama (it ignores the experts), this is the closest honest reference of a quantized file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .llamacpp import convert, quantize
from .tinymodel import save_random_model, unpermute_qk
from .tinytokenizer import make_tokenizer

ARCHS = ("qwen3moe", "mixtral")
HF_CLASS = {"qwen3moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM"}
# Shapes whose rows K-quants can encode (multiples of 256). Qwen3-MoE's expert width is 768 because
# transformers' GGUF loader does not read qwen3moe.expert_feed_forward_length and keeps its default.
SHAPE = {"hidden": 256, "heads": 4, "kv_heads": 2, "experts": 4, "used": 2}
EXPERT_FF = {"qwen3moe": 768, "mixtral": 512}


def _config(arch: str, vocab: int, n_layers: int, max_pos: int, tok, **kw):
    import transformers

    common = dict(
        vocab_size=vocab,
        hidden_size=kw["hidden"],
        num_hidden_layers=n_layers,
        num_attention_heads=kw["heads"],
        num_key_value_heads=kw["kv_heads"],
        head_dim=kw["hidden"] // kw["heads"],
        max_position_embeddings=max_pos,
        rms_norm_eps=1e-5,
        num_experts_per_tok=kw["used"],
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        sliding_window=None,
    )
    if arch == "qwen3moe":
        # llama.cpp always renormalises qwen3moe's top-k weights (transformers' GGUF loader says so too)
        return transformers.Qwen3MoeConfig(
            **common,
            num_experts=kw["experts"],
            moe_intermediate_size=kw["expert_ff"],
            intermediate_size=kw["expert_ff"],
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            use_sliding_window=False,
        )
    return transformers.MixtralConfig(
        **common, num_local_experts=kw["experts"], intermediate_size=kw["expert_ff"]
    )


def make_hf_moe(
    out_dir: str | os.PathLike,
    arch: str = "qwen3moe",
    n_layers: int = 2,
    max_pos: int = 4096,
    seed: int = 0,
    **shape,
) -> Path:
    """Save a random `arch` MoE model with the tiny gpt2 tokenizer to `out_dir` (float32 safetensors).

    shape: hidden, heads, kv_heads, experts, used, expert_ff (defaults: SHAPE, EXPERT_FF[arch]).
    The router and output weights are scaled up so that tokens spread over the experts and greedy
    decoding rarely meets a near tie.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer("gpt2")
    kw = {**SHAPE, "expert_ff": EXPERT_FF[arch], **shape}
    cfg = _config(arch, len(tok), n_layers, max_pos, tok, **kw)
    cfg.architectures = [HF_CLASS[arch]]
    return save_random_model(cfg, tok, out, seed, _init)


def _init(name: str, p):
    """Norms away from 1; a router with distinct, well separated expert scores; small experts; a peaked
    output head (few near-ties between tokens)."""
    import torch

    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn_like(p)
    if name.endswith("gate.weight"):  # the router
        return 0.5 * torch.randn_like(p)
    if "experts" in name:
        return 0.02 * torch.randn_like(p)
    if name == "lm_head.weight":
        return 0.05 * torch.randn_like(p)
    return None


def build(workdir: str | os.PathLike, arch: str, qtypes=("F32",), **kw) -> tuple[Path, dict[str, Path]]:
    """The HF directory and the GGUF files (F32 by the converter, others quantized from it) of a tiny
    `arch` model under `workdir`; files already there are reused."""
    work = Path(workdir)
    hf = work / f"hf-{arch}"
    if not (hf / "config.json").exists():
        make_hf_moe(hf, arch, **kw)
    f32 = work / f"{arch}-F32.gguf"
    if not f32.exists():
        convert(hf, f32)
    files = {}
    for q in qtypes:
        files[q] = f32 if q == "F32" else work / f"{arch}-{q}.gguf"
        if not files[q].exists():
            quantize(f32, files[q], q)
    return hf, files


# --- the reference: transformers' MoE class on gguf-py's dequantization of a file ------------------------

_ATTN = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def _hf_layer_tensors(arch: str, i: int, name: str, arr: np.ndarray, meta: dict) -> dict[str, np.ndarray]:
    """One GGUF layer tensor -> its HF parameters (MoE names are those of transformers 5's fused experts)."""
    pre = f"model.layers.{i}."
    mod = name.rsplit(".", 1)[0]
    if mod == "ffn_gate_inp":
        return {pre + "mlp.gate.weight": arr}
    if mod == "ffn_down_exps":
        return {pre + "mlp.experts.down_proj": arr}
    if mod in ("ffn_gate_exps", "ffn_up_exps"):
        return {pre + f"mlp.experts.{mod}": arr}  # fused into gate_up_proj by reference_model
    if arch == "mixtral" and mod == "attn_q":
        arr = unpermute_qk(arr, meta["n_head"])
    elif arch == "mixtral" and mod == "attn_k":
        arr = unpermute_qk(arr, meta["n_kv"])
    return {pre + _ATTN[mod] + ".weight": arr}


def reference_model(gguf_path: str | os.PathLike, hf_dir: str | os.PathLike):
    """transformers' model of `hf_dir`'s config with the weights gguf-py dequantizes from `gguf_path`."""
    import gguf
    import torch
    import transformers

    r = gguf.GGUFReader(str(gguf_path))
    arch_key = r.fields["general.architecture"].contents()
    cfg = transformers.AutoConfig.from_pretrained(hf_dir)
    arch = "qwen3moe" if arch_key == "qwen3moe" else "mixtral"
    meta = {"n_head": cfg.num_attention_heads, "n_kv": cfg.num_key_value_heads}
    sd: dict[str, np.ndarray] = {}
    for t in r.tensors:
        arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        arr = arr.reshape([int(x) for x in reversed(t.shape)])
        if t.name == "token_embd.weight":
            sd["model.embed_tokens.weight"] = arr
        elif t.name == "output_norm.weight":
            sd["model.norm.weight"] = arr
        elif t.name == "output.weight":
            sd["lm_head.weight"] = arr
        else:
            _, idx, rest = t.name.split(".", 2)
            sd.update(_hf_layer_tensors(arch, int(idx), rest, arr, meta))
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}.mlp.experts."
        gate, up = sd.pop(pre + "ffn_gate_exps"), sd.pop(pre + "ffn_up_exps")
        sd[pre + "gate_up_proj"] = np.concatenate([gate, up], axis=1)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"reference model mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    """Make a tiny MoE GGUF from the shell with llama.cpp's converter (and llama-quantize)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ollama_airllm.devtools.tinymoe", description=main.__doc__)
    p.add_argument("--arch", choices=ARCHS, default="qwen3moe")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts", type=int, default=SHAPE["experts"])
    p.add_argument("--used", type=int, default=SHAPE["used"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qtype", default="F32", help="F32, or a llama-quantize type such as Q8_0, Q4_K_M")
    p.add_argument("-o", "--output", required=True, help="GGUF file to write")
    a = p.parse_args(argv)
    if not 1 <= a.used <= a.experts:
        p.error(f"--used must be from 1 to --experts ({a.experts}), got {a.used}")
    with tempfile.TemporaryDirectory() as tmp:
        hf = make_hf_moe(Path(tmp) / "hf", a.arch, a.layers, seed=a.seed, experts=a.experts, used=a.used)
        if a.qtype.upper() == "F32":
            convert(hf, a.output)
        else:
            quantize(convert(hf, Path(tmp) / "f32.gguf"), a.output, a.qtype)
    print(a.output)


if __name__ == "__main__":
    main()
