"""The Hugging Face checkpoint path: airllm 4.0.0 splits and streams the layers; we drive it.

airllm calls clean_memory() (gc.collect + malloc_trim + empty_cache) after every streamed module, which
costs ~0.2 s per call on a small CPU and dominates its run time. It frees nothing that the next layer would
not reuse, so it is replaced by a no-op (airllm.airllm_base.clean_memory, process-wide). Generation uses
our sampler, stop handling and per-slot transformers DynamicCache (cropped for prefix reuse).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch

from .config import EngineConfig, dtype_name
from .gguf_file import ModelFileError
from .tokenizer import from_hf
from .types import Cancelled, EngineInfo, build_info, kv_cache_bytes


def _no_clean_memory() -> None:
    """Replacement for airllm's per-layer clean-up: the caching allocators reuse the memory anyway."""


def disable_clean_memory() -> None:
    import airllm.airllm_base

    airllm.airllm_base.clean_memory = _no_clean_memory


def load_airllm(path: Path, config: EngineConfig, device: torch.device, dtype: torch.dtype):
    """(backend, info) for an HF checkpoint directory, split and streamed layer by layer by airllm."""
    _check_checkpoint(path, config, device)
    import airllm

    disable_clean_memory()
    with contextlib.redirect_stdout(io.StringIO()):  # airllm prints progress to stdout
        m = airllm.AutoModel.from_pretrained(
            str(path),
            device=str(device),
            dtype=dtype,
            compression=config.compression,
            layer_shards_saving_path=config.hf_split_dir,
        )
    tokenizer = from_hf(m.tokenizer)
    return AirLLMBackend(m, tokenizer, device), _info(path, m, tokenizer, config, device, dtype)


def _check_checkpoint(path: Path, config: EngineConfig, device: torch.device) -> None:
    if not (path / "config.json").is_file():
        raise ModelFileError(path, "not a Hugging Face checkpoint directory (config.json is missing)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelFileError(path, "no *.safetensors or *.bin weights in the directory")
    if config.compression and device.type != "cuda":
        raise ValueError(f"compression={config.compression} needs a GPU (airllm quantizes with bitsandbytes)")


def _resident_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers that stay materialized between passes (airllm moves every
    streamed layer back to the meta device after use)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type != "meta")


def _info(path: Path, m, tokenizer, config: EngineConfig, device, dtype) -> EngineInfo:
    text_cfg = getattr(m.config, "text_config", None) or m.config
    n_ctx_train = int(getattr(text_cfg, "max_position_embeddings", 4096))
    n_ctx = config.context_for(n_ctx_train)
    n_layer = int(text_cfg.num_hidden_layers)
    n_head = int(text_cfg.num_attention_heads)
    n_kv = int(getattr(text_cfg, "num_key_value_heads", n_head) or n_head)
    head_dim = int(getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // n_head)
    split_bytes = sum(f.stat().st_size for f in Path(m.checkpoint_path).glob("*.safetensors"))
    return build_info(
        "airllm",
        tokenizer,
        config,
        device,
        dtype,
        architecture=str(text_cfg.model_type),
        model_name=path.name,
        file_size=sum(f.stat().st_size for f in path.glob("*.safetensors")),
        file_type=config.compression or dtype_name(dtype),
        n_vocab=int(text_cfg.vocab_size),
        n_ctx_train=n_ctx_train,
        n_ctx=n_ctx,
        n_layer=n_layer,
        n_embd=int(text_cfg.hidden_size),
        n_head=n_head,
        n_head_kv=n_kv,
        n_params=sum(p.numel() for p in m.model.parameters()),
        chat_template=getattr(m.tokenizer, "chat_template", None) or _template_file(path),
        n_resident_layers=0,
        n_streamed_layers=n_layer,
        head_resident=False,
        resident_bytes=_resident_bytes(m.model),
        host_bytes=split_bytes,
        kv_bytes=kv_cache_bytes(n_layer, n_kv, head_dim, n_ctx, dtype) * config.n_slots,
        staging_bytes=0,
        streamed_bytes_per_pass=split_bytes,
    )


def _template_file(path: Path) -> str | None:
    f = path / "chat_template.jinja"
    if f.is_file():
        return f.read_text()
    cfg = path / "tokenizer_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("chat_template")
    return None


class AirLLMBackend:
    """Forward passes through airllm's hooked transformers model with our own KV caches."""

    def __init__(self, m, tokenizer, device: torch.device) -> None:
        self.m = m
        self.tokenizer = tokenizer
        self.device = device
        self._should_stop = None
        layers = m.model.model.layers if hasattr(m.model, "model") else m.model.layers
        for layer in layers:
            layer.register_forward_pre_hook(self._check_stop, prepend=True)

    def _check_stop(self, module, args) -> None:
        if self._should_stop is not None and self._should_stop():
            raise Cancelled

    def new_cache(self, n_ctx: int):
        from transformers import DynamicCache

        return DynamicCache()

    def truncate(self, cache, n: int) -> None:
        have = cache.get_seq_length()
        if n == 0 and have:
            cache.reset()
        elif have > n:
            cache.crop(n - have)  # transformers 5: a negative count removes that many tokens

    def forward(self, cache, tokens, start, want, should_stop):
        from transformers import DynamicCache

        if cache is None:
            cache = DynamicCache()
        self.truncate(cache, start)
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        self._should_stop = should_stop
        try:
            with torch.inference_mode():
                if want == "hidden":
                    out = self.m.model.model(input_ids=ids, past_key_values=cache, use_cache=True)
                    return out.last_hidden_state[0].float()
                out = self.m.model(
                    input_ids=ids,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1 if want == "last" else 0,
                )
        finally:
            self._should_stop = None
        logits = out.logits[0].float()
        return logits[-1] if want == "last" else logits

    def close(self) -> None:
        executor = getattr(self.m, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True)
