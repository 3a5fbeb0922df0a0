"""Tiny random Gemma 3 and gpt-oss checkpoints, converted to GGUF by llama.cpp's own convert_hf_to_gguf.

    python -m ollama_airllm.devtools.tinyarch --arch gemma3 -o gemma3.gguf

`make_hf_model` saves a random Gemma3ForCausalLM / GptOssForCausalLM (safetensors + config + the tiny
tokenizer) whose sliding window is smaller than a test prompt, with both sliding and full attention
layers; `llamacpp.convert` runs `$LLAMA_CONVERT_PY` on it, telling it only the tiny
tokenizer's `tokenizer.ggml.pre` name (the converter knows BPE tokenizers by a hash a freshly trained tiny
vocabulary cannot match); every tensor and every other metadata key is the converter's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from functools import partial
from pathlib import Path

from .llamacpp import convert
from .tinymodel import save_random_model
from .tinytokenizer import make_tokenizer

ARCHS = ("gemma3", "gpt-oss")
HF_CLASS = {"gemma3": "Gemma3ForCausalLM", "gpt-oss": "GptOssForCausalLM"}
WINDOW = 4  # the sliding window: shorter than every test prompt


def _gemma3_config(tok, hidden: int, heads: int, kv_heads: int, n_layers: int, **kw):
    import transformers

    head_dim = hidden // heads
    return transformers.Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,  # the default pattern: every 6th layer is global
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,  # llama.cpp scales queries by 1/sqrt(key_length) (but the 27B)
        sliding_window=WINDOW,
        max_position_embeddings=4096,
        final_logit_softcapping=kw.get("softcap", 3.0),
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )


def _gptoss_config(tok, hidden: int, heads: int, kv_heads: int, n_layers: int, **kw):
    import transformers

    return transformers.GptOssConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden,
        num_hidden_layers=n_layers,  # even layers slide, odd ones see everything
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        num_local_experts=kw.get("experts", 4),
        num_experts_per_tok=kw.get("top_k", 2),
        sliding_window=WINDOW,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 8.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 512,
        },
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )


def make_hf_model(
    out_dir: str | os.PathLike,
    arch: str = "gemma3",
    n_layers: int | None = None,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
    **kw,
) -> Path:
    """Save a random `arch` checkpoint with the tiny gpt2 tokenizer to `out_dir`.

    n_layers defaults to 7 for gemma3 (layers 0-4 and 6 slide, 5 is global) and 3 for gpt-oss.
    Norm weights, biases and attention sinks are random too, so a wrong path shows in the logits.
    mxfp4 (gpt-oss): the experts are stored as OpenAI's checkpoints store them, MXFP4 `*_blocks` +
    `*_scales` with a quantization_config, so the converter repacks them into GGUF MXFP4 tensors
    (transformers cannot run such a checkpoint without its kernels: use `reference_model` on the GGUF).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer("gpt2")
    layers = n_layers or (7 if arch == "gemma3" else 3)
    make = _gemma3_config if arch == "gemma3" else _gptoss_config
    cfg = make(tok, hidden, heads, kv_heads, layers, **kw)
    cfg.architectures = [HF_CLASS[arch]]
    save_random_model(cfg, tok, out, seed, partial(_init, arch))
    if kw.get("mxfp4"):
        _to_mxfp4(out, seed)
    return out


def _init(arch: str, name: str, p):
    """Norms (gemma3 stores w of 1 + w; gpt-oss w itself), biases and sinks random too, so a wrong path
    shows in the logits; matrices small."""
    import torch

    if name.endswith("norm.weight"):
        return (0.0 if arch == "gemma3" else 1.0) + 0.1 * torch.randn_like(p)
    if name.endswith("sinks"):
        return 0.5 * torch.randn_like(p)
    if name.endswith("bias") or p.dim() >= 2:
        return 0.05 * torch.randn_like(p)
    return None


def _to_mxfp4(out: Path, seed: int) -> None:
    """Replace the saved gpt-oss expert weights with random MXFP4 blocks and E8M0 scales."""
    import torch
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(seed)
    path = out / "model.safetensors"
    state = load_file(path)
    for name in [n for n in state if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        rows = state.pop(name).transpose(-1, -2).shape[-2:]  # OpenAI layout: [E, out, in]
        n_expert = state[name + "_bias"].shape[0]
        blocks = torch.randint(0, 256, (n_expert, rows[0], rows[1] // 32, 16), generator=g, dtype=torch.uint8)
        scales = torch.randint(119, 124, (n_expert, rows[0], rows[1] // 32), generator=g, dtype=torch.uint8)
        state[name + "_blocks"], state[name + "_scales"] = blocks, scales
    save_file(state, path, metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["self_attn", "router"]}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))


def reference_model(gguf_path: str | os.PathLike, hf_dir: str | os.PathLike):
    """transformers (float32) with the weights of `gguf_path` as gguf-py dequantizes them.

    gemma3: transformers' own GGUF loader (`gguf_file=`), with the config of the checkpoint the file was
    converted from: the loader's config drops query_pre_attn_scalar, final_logit_softcapping and the global
    layers' linear rope scaling. gpt-oss: its loader fails (transformers 5.23: a float() of an array key,
    expert tensor names the converter does not write), so the converter's mapping is inverted here.
    """
    import torch
    import transformers

    path = Path(gguf_path)
    cfg = transformers.AutoConfig.from_pretrained(hf_dir)
    if cfg.model_type != "gpt_oss":
        return transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, config=cfg, dtype=torch.float32
        ).eval()
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    state = _gptoss_state(path)
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ValueError(f"{path}: no tensors for {sorted(missing)[:4]}")
    model.load_state_dict(state, strict=True)
    return model


_GPTOSS_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "attn_sinks.weight": "self_attn.sinks",
    "ffn_gate_inp.weight": "mlp.router.weight",
    "ffn_gate_inp.bias": "mlp.router.bias",
    **{f"attn_{a}.{p}": f"self_attn.{a}_proj.{p}" for a in "qkv" for p in ("weight", "bias")},
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
}


def _gptoss_state(path: Path) -> dict:
    """HF GptOss state dict from the converter's GGUF: gate/up re-interleaved, expert stacks transposed."""
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize

    raw = {}
    for t in GGUFReader(path).tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        raw[t.name] = torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(shape).astype("float32"))
    state = {
        "model.embed_tokens.weight": raw.pop("token_embd.weight"),
        "model.norm.weight": raw.pop("output_norm.weight"),
        "lm_head.weight": raw.pop("output.weight"),
    }
    layers = sorted({int(n.split(".")[1]) for n in raw})
    for i in layers:
        pre, b = f"model.layers.{i}.", lambda n: raw.pop(f"blk.{i}.{n}")  # noqa: B023
        gate, up = b("ffn_gate_exps.weight"), b("ffn_up_exps.weight")  # [E, ff, n_embd] each
        both = torch.empty(gate.shape[0], 2 * gate.shape[1], gate.shape[2])
        both[:, ::2], both[:, 1::2] = gate, up
        state[pre + "mlp.experts.gate_up_proj"] = both.transpose(-1, -2).contiguous()
        gb, ub = b("ffn_gate_exps.bias"), b("ffn_up_exps.bias")
        bias = torch.empty(gb.shape[0], 2 * gb.shape[1])
        bias[:, ::2], bias[:, 1::2] = gb, ub
        state[pre + "mlp.experts.gate_up_proj_bias"] = bias
        state[pre + "mlp.experts.down_proj"] = b("ffn_down_exps.weight").transpose(-1, -2).contiguous()
        state[pre + "mlp.experts.down_proj_bias"] = b("ffn_down_exps.bias")
        for g, h in _GPTOSS_NAMES.items():
            state[pre + h] = b(g)
    if raw:
        raise ValueError(f"{path}: tensors without an HF name: {sorted(raw)[:4]}")
    return state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ollama_airllm.devtools.tinyarch", description=__doc__.split("\n")[0]
    )
    p.add_argument("--arch", choices=ARCHS, default="gemma3")
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, type=Path)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        convert(make_hf_model(d, a.arch, a.layers, seed=a.seed), a.output)
    print(a.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
