"""Tiny random models for tests and benchmarks: an HF safetensors directory and its GGUF conversion.

    python -m ollama_airllm.devtools.tinymodel --arch llama --layers 4 --qtype F32 --ctx 16384 -o model.gguf
    python -m ollama_airllm.devtools.tinymodel --arch mistral --tokenizer spm -o mistral-like.gguf

`make_hf_model` saves a random Llama/Mistral/Qwen2/Qwen3 checkpoint with the tiny tokenizer;
`write_gguf` converts it the way llama.cpp's convert_hf_to_gguf does (tensor names, the Q/K rotary
permutation for llama/mistral, metadata, tokenizer). gguf cannot quantize K-types, so for Q4_K/Q5_K/Q6_K
the 2-D weights are random but valid blocks: the GGUF then *is* the model, and its reference is
transformers run on gguf.quants' numpy dequantization of those blocks (`reference_model`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..atomicfile import replace_with
from .tinytokenizer import CHAT_TEMPLATE, CONTROL_TOKENS, HF_SPLIT_REGEX, KINDS, make_tokenizer

ARCHS = ("llama", "mistral", "qwen2", "qwen3")
QTYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")
# general.file_type values (llama_ftype) for each qtype.
FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "BF16": 32}
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
# Small shapes per qtype: K-quant rows must be multiples of 256, the others of 32.
SMALL_SHAPE = {"hidden": 64, "intermediate": 128, "heads": 4, "kv_heads": 2}
K_SHAPE = {"hidden": 256, "intermediate": 512, "heads": 4, "kv_heads": 2}


def default_shape(qtype: str = "F32") -> dict:
    """The smallest shape whose weight rows `qtype` can encode."""
    return dict(K_SHAPE if qtype in K_TYPES else SMALL_SHAPE)


HF_CLASS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def _hf_config(arch: str, **kw):
    import transformers

    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }[arch]
    extra = {"sliding_window": None} if arch in ("mistral", "qwen2", "qwen3") else {}
    if arch in ("qwen2", "qwen3"):
        extra["use_sliding_window"] = False
    return cls(**kw, **extra)


def make_hf_model(
    out_dir: str | os.PathLike,
    arch: str = "llama",
    n_layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_pos: int = 4096,
    seed: int = 0,
    tie_embeddings: bool = False,
    dtype: str = "float32",
    rope_theta: float = 10000.0,
    rms_eps: float = 1e-5,
    head_dim: int | None = None,
    llama3_rope: dict | None = None,
    tokenizer: str = "gpt2",
) -> Path:
    """Save a random `arch` model with the tiny tokenizer to `out_dir` (safetensors + config + tokenizer).

    tokenizer: the tiny tokenizer's kind (tinytokenizer.KINDS: gpt2, llama-bpe, qwen2, spm).
    llama3_rope: Llama 3.1-style rope scaling, e.g. {"factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}; the GGUF then gets rope_freqs.weight.
    """

    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(tokenizer)
    cfg = _hf_config(
        arch,
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim or hidden // heads,
        max_position_embeddings=max_pos,
        rms_norm_eps=rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta}
        if not llama3_rope
        else {"rope_type": "llama3", "rope_theta": rope_theta, **llama3_rope},
        tie_word_embeddings=tie_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        dtype=dtype,
    )
    cfg.architectures = [HF_CLASS[arch]]
    return save_random_model(cfg, tok, out, seed, _init, dtype)


def _init(name: str, p):
    """Norm weights away from 1 and biases away from 0, so a wrong norm/bias path shows in the logits."""
    import torch

    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn_like(p)
    if name.endswith(".bias"):
        return 0.05 * torch.randn_like(p)
    return None


def save_random_model(cfg, tok, out: Path, seed: int, init, dtype: str = "float32") -> Path:
    """transformers' model of `cfg` with seeded random weights, saved with `tok` to `out` (safetensors).

    init(name, parameter) gives a parameter's new values, or None to keep transformers' initialisation.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            values = init(name, p)
            if values is not None:
                p.copy_(values)
    model.to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


# --- GGUF -----------------------------------------------------------------------------------------------


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: HF's rotate-half layout -> GGUF's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `_permute_qk` (GGUF rows -> HF rows)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_tensor_name(hf_name: str) -> str:
    """HF parameter name -> llama.cpp tensor name."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".")  # model.layers.N.<module...>.weight|bias
    if parts[:2] != ["model", "layers"]:
        raise ValueError(f"no GGUF name for tensor {hf_name!r}")
    module = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{_HF_TO_GGUF[module]}.{parts[-1]}"


def _random_k_blocks(rng: np.random.Generator, rows: int, cols: int, qtype: str) -> np.ndarray:
    """Random valid K-quant blocks (finite scales) giving weights of magnitude ~0.03."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    qt = GGMLQuantizationType[qtype]
    block, size = GGML_QUANT_SIZES[qt]
    n = rows * (cols // block)
    b = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    d = rng.uniform(0.5, 1.5, size=n)
    if qtype == "Q6_K":  # ql[128] qh[64] scales[16] (int8) d(f16): w = d * scale * (q - 32)
        b[:, 208:210] = (d * 0.05 / (64 * 32)).astype(np.float16).view(np.uint8).reshape(n, 2)
    else:  # d(f16) dmin(f16) scales[12] ...: w = d * sc * q - dmin * m
        qmax = 15 if qtype == "Q4_K" else 31
        dd = d * 0.06 / (63 * qmax)
        b[:, 0:2] = dd.astype(np.float16).view(np.uint8).reshape(n, 2)
        b[:, 2:4] = (dd * qmax / 2).astype(np.float16).view(np.uint8).reshape(n, 2)
    return b.reshape(rows, -1)


def _tokenizer_metadata(writer, hf_dir: Path) -> None:
    """convert_hf_to_gguf's tokenizer keys: gpt2 (with the `pre` its split regex names) or llama (SPM)."""
    tok_json = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = dict(tok_json["model"]["vocab"])
    types = {}
    for added in tok_json.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        types[added["id"]] = 3 if added["special"] else 4  # CONTROL / USER_DEFINED
    tokens = [""] * len(vocab)
    for text, idx in vocab.items():
        tokens[idx] = text
    ids = {t: vocab[t] for t in CONTROL_TOKENS}
    spm = bool(tok_json["model"].get("byte_fallback"))
    if spm:
        _spm_metadata(writer, tokens, types)
    else:
        _bpe_metadata(writer, tok_json)
    writer.add_token_list(tokens)
    writer.add_token_types([types.get(i, 1) for i in range(len(tokens))])
    writer.add_bos_token_id(ids["<s>"])
    writer.add_eos_token_id(ids["</s>"])
    writer.add_unk_token_id(ids["<unk>"])
    writer.add_pad_token_id(ids["</s>"])
    writer.add_eot_token_id(ids["<|im_end|>"])
    writer.add_add_bos_token(spm)  # the SPM kind adds BOS, as Llama 2 and Mistral do
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def _bpe_metadata(writer, tok_json: dict) -> None:
    """A byte-level BPE: merges, and the pre-tokenizer name llama.cpp gives the split."""
    pre = tok_json["pre_tokenizer"]
    if pre["type"] == "ByteLevel":  # HF's ByteLevel(use_regex=True) is GPT-2's regex, llama.cpp's "gpt-2"
        name = "gpt-2"
    else:
        regex = pre["pretokenizers"][0]["pattern"]["Regex"]
        name = next(k for k, v in HF_SPLIT_REGEX.items() if v == regex)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(name)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]])


def _spm_metadata(writer, tokens: list[str], types: dict[int, int]) -> None:
    """A SentencePiece vocabulary as convert_hf_to_gguf writes it: byte tokens typed BYTE, scores by rank,
    no merges."""
    for i, text in enumerate(tokens):
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = 6  # BYTE
        elif text == "<unk>":
            types[i] = 2  # UNKNOWN
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_scores([0.0 if i in types else -float(i) for i in range(len(tokens))])
    writer.add_add_space_prefix(True)


def write_gguf(
    hf_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    qtype: str = "F32",
    ctx: int | None = None,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """Convert the HF checkpoint in `hf_dir` to a GGUF file with 2-D weights in `qtype`.

    `ctx` overrides the declared context length (default: the config's max_position_embeddings).
    Norms and biases stay F32, as llama.cpp's converter and quantizer keep them.
    """
    import gguf
    from safetensors.numpy import load_file

    if qtype not in QTYPES:
        raise ValueError(f"qtype {qtype!r} is not one of {', '.join(QTYPES)}")
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    hf_arch = {v: k for k, v in HF_CLASS.items()}[cfg["architectures"][0]]
    arch = GGUF_ARCH[hf_arch]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    tensors = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        tensors.update(load_file(f))
    if cfg.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)

    def write(tmp: Path) -> None:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(name or f"tiny-{hf_arch}-{qtype.lower()}")
        w.add_context_length(int(ctx or cfg["max_position_embeddings"]))
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(rope_theta)
        w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
        w.add_vocab_size(cfg["vocab_size"])
        w.add_file_type(FILE_TYPE[qtype])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _tokenizer_metadata(w, hf_dir)

        rng = np.random.default_rng(seed)
        for hf_name in sorted(tensors, key=_tensor_order):
            data = tensors[hf_name].astype(np.float32)
            if arch == "llama" and hf_name.endswith("q_proj.weight"):
                data = _permute_qk(data, n_head)
            elif arch == "llama" and hf_name.endswith("k_proj.weight"):
                data = _permute_qk(data, n_kv)
            _add_tensor(w, gguf_tensor_name(hf_name), data, qtype, rng)
        if rope.get("rope_type") == "llama3":
            w.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, head_dim))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    return replace_with(out_path, write)


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """convert_hf_to_gguf's rope_freqs for Llama 3.1 scaling: one divisor per rotary frequency."""
    base = float(rope["rope_theta"])
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high = (
        rope.get("factor", 8.0),
        rope.get("low_freq_factor", 1.0),
        rope.get("high_freq_factor", 4.0),
    )
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def _tensor_order(hf_name: str) -> tuple:
    """llama.cpp order: token_embd, blk.0 ... blk.N, output_norm, output."""
    if hf_name.startswith("model.embed_tokens"):
        return (0, 0, hf_name)
    if hf_name.startswith("model.layers."):
        return (1, int(hf_name.split(".")[2]), hf_name)
    return (2, 0 if "norm" in hf_name else 1, hf_name)


def _add_tensor(w, gguf_name: str, data: np.ndarray, qtype: str, rng: np.random.Generator) -> None:
    import gguf

    GT = gguf.GGMLQuantizationType
    if data.ndim == 1 or qtype == "F32":
        w.add_tensor(gguf_name, np.ascontiguousarray(data, dtype=np.float32))
        return
    if qtype in K_TYPES:
        blocks = _random_k_blocks(rng, data.shape[0], data.shape[1], qtype)
        w.add_tensor(gguf_name, blocks, raw_dtype=GT[qtype])
        return
    w.add_tensor(gguf_name, gguf.quants.quantize(data, GT[qtype]), raw_dtype=GT[qtype])


# --- the reference: transformers on gguf's numpy dequantization ------------------------------------------


def reference_state_dict(gguf_path: str | os.PathLike) -> tuple[dict, dict]:
    """Dequantize every tensor of a GGUF with gguf.quants into HF names and layout.

    Returns (state_dict of float32 torch tensors, summary of the metadata the HF config needs).
    """
    import gguf
    import torch

    r = gguf.GGUFReader(str(gguf_path))
    arch = _field(r, "general.architecture")
    meta = {
        "arch": arch,
        "n_layer": _field(r, f"{arch}.block_count"),
        "n_embd": _field(r, f"{arch}.embedding_length"),
        "n_ff": _field(r, f"{arch}.feed_forward_length"),
        "n_head": _field(r, f"{arch}.attention.head_count"),
        "n_kv": _field(r, f"{arch}.attention.head_count_kv"),
        "head_dim": _field(r, f"{arch}.attention.key_length"),
        "rope_theta": _field(r, f"{arch}.rope.freq_base"),
        "eps": _field(r, f"{arch}.attention.layer_norm_rms_epsilon"),
        "ctx": _field(r, f"{arch}.context_length"),
    }
    inv = {v: k for k, v in _HF_TO_GGUF.items()}
    sd = {}
    for t in r.tensors:
        if t.name == "rope_freqs.weight":  # not a parameter: reference_model does not model rope scaling
            continue
        arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        arr = arr.reshape([int(x) for x in reversed(t.shape)])
        name = t.name
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        else:
            _, idx, mod, kind = name.split(".")
            hf = f"model.layers.{idx}.{inv[mod]}.{kind}"
            if arch == "llama" and mod == "attn_q" and kind == "weight":
                arr = unpermute_qk(arr, meta["n_head"])
            elif arch == "llama" and mod == "attn_k" and kind == "weight":
                arr = unpermute_qk(arr, meta["n_kv"])
        sd[hf] = torch.from_numpy(np.ascontiguousarray(arr))
    meta["vocab"] = sd["model.embed_tokens.weight"].shape[0]
    meta["tied"] = "lm_head.weight" not in sd
    return sd, meta


def _field(reader, key: str):
    f = reader.fields[key]
    v = f.contents()
    return v


def reference_model(gguf_path: str | os.PathLike):
    """A transformers model whose weights are gguf.quants' dequantization of the GGUF's blocks (float32)."""
    import torch

    sd, m = reference_state_dict(gguf_path)
    arch = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}[m["arch"]]
    cfg = _hf_config(
        arch,
        vocab_size=m["vocab"],
        hidden_size=m["n_embd"],
        intermediate_size=m["n_ff"],
        num_hidden_layers=m["n_layer"],
        num_attention_heads=m["n_head"],
        num_key_value_heads=m["n_kv"],
        head_dim=m["head_dim"],
        max_position_embeddings=m["ctx"],
        rms_norm_eps=m["eps"],
        rope_theta=m["rope_theta"],
        tie_word_embeddings=m["tied"],
    )
    import transformers

    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (m["tied"] and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"reference model mismatch: missing {missing}, unexpected {unexpected}")
    if m["tied"]:
        model.tie_weights()
    return model.eval()


# --- CLI --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Make a tiny model from the shell (HF directory and/or GGUF)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ollama_airllm.devtools.tinymodel", description=main.__doc__)
    p.add_argument("--arch", choices=ARCHS, default="llama")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, help="default: 64, or 256 for K-quants")
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--intermediate", type=int, help="default: 128, or 512 for K-quants")
    p.add_argument("--ctx", type=int, default=4096, help="declared context length")
    p.add_argument("--qtype", choices=QTYPES, default="F32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tie-embeddings", action="store_true")
    p.add_argument("--tokenizer", choices=KINDS, default="gpt2", help="the tiny tokenizer's kind")
    p.add_argument("--hf-dir", help="where to keep the HF checkpoint (default: a temporary directory)")
    p.add_argument("-o", "--output", help="GGUF file to write (omit to make only the HF directory)")
    a = p.parse_args(argv)
    if not a.output and not a.hf_dir:
        p.error("give -o/--output and/or --hf-dir")
    shape = default_shape(a.qtype)
    for key in shape:
        if getattr(a, key) is not None:
            shape[key] = getattr(a, key)
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(a.hf_dir or tmp)
        make_hf_model(
            hf,
            arch=a.arch,
            n_layers=a.layers,
            max_pos=a.ctx,
            seed=a.seed,
            tie_embeddings=a.tie_embeddings,
            tokenizer=a.tokenizer,
            **shape,
        )
        if a.output:
            write_gguf(hf, a.output, qtype=a.qtype, ctx=a.ctx, seed=a.seed)
            print(a.output)
        if a.hf_dir:
            print(a.hf_dir)


if __name__ == "__main__":
    main()
