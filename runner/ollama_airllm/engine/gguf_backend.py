"""The GGUF backend: choose the resident layers within the memory budget, stream the rest from the file."""

from __future__ import annotations

from pathlib import Path

import torch

from .budget import choose_resident, needs, resident_cost, weight_budget
from .config import EngineConfig, device_free_bytes
from .experts import build_expert_store
from .gguf_file import GGUFModel, open_gguf
from .model import KVCache, Transformer
from .tokenizer import Tokenizer, from_gguf_metadata
from .types import EngineInfo, build_info
from .weights import WeightStore, build_units


def load_gguf(path: Path, config: EngineConfig, device: torch.device, dtype: torch.dtype):
    """(backend, info) for a GGUF file: as many units resident as the budget allows, the rest streamed."""
    model = open_gguf(path)
    tokenizer = from_gguf_metadata(model.metadata, str(path))
    n_ctx = config.context_for(model.spec.n_ctx_train)
    kv_bytes = KVCache.bytes_for(model.spec, n_ctx, dtype) * config.n_slots
    units = build_units(model, dtype)
    expert_layers = [sum(r.nbytes for r in u.experts.values()) for u in units]
    need = needs(model.spec, units, config, n_ctx, device, dtype, kv_bytes, expert_layers)
    if config.memory_budget is not None:
        budget = int(config.memory_budget)
    else:
        budget = weight_budget(device_free_bytes(device), config, units, need, resident_cost(device))
    resident = choose_resident(units, config, max(budget, 0), resident_cost(device))
    store = WeightStore(model, device, dtype, resident)
    left = max(budget, 0) - sum(resident_cost(device)(units[i]) for i in resident)  # the experts' share
    experts = build_expert_store(model, store, left)  # None for a dense model
    transformer = Transformer(model.spec, store, n_ctx, config.n_batch, experts, config.graphs)
    backend = GGUFBackend(model, store, transformer, tokenizer, device, dtype)
    info = _info(model, store, tokenizer, config, device, dtype, n_ctx=n_ctx, kv_bytes=kv_bytes)
    info.compute_bytes = need.compute
    if transformer.graphs is not None:
        info.graphs = transformer.graphs.stats
    if experts is not None:
        info.experts = experts.stats
        info.resident_bytes += experts.resident_bytes()
    return backend, info


def _file_type(file_type: int | None) -> str:
    """llama.cpp's name of general.file_type (e.g. Q4_K_M), "?" when the file does not say."""
    from gguf import LlamaFileType

    if file_type is None:
        return "?"
    try:
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except ValueError:
        return str(file_type)


def _info(
    model: GGUFModel, store: WeightStore, tokenizer: Tokenizer, config, device, dtype, **sizes
) -> EngineInfo:
    spec = model.spec
    streamed = [u for u in store.units if u.index not in store.resident]
    return build_info(
        "gguf",
        tokenizer,
        config,
        device,
        dtype,
        architecture=spec.arch,
        model_name=spec.name,
        file_size=model.file_size,
        file_type=_file_type(spec.file_type),
        n_vocab=spec.n_vocab,
        n_ctx_train=spec.n_ctx_train,
        n_layer=spec.n_layer,
        n_embd=spec.n_embd,
        n_head=spec.n_head,
        n_head_kv=spec.n_head_kv,
        n_params=sum(r.numel for refs in [*model.layers, model.globals] for r in refs.values()),
        chat_template=spec.chat_template,
        n_resident_layers=sum(1 for i in store.resident if i < spec.n_layer),
        n_streamed_layers=sum(1 for u in streamed if u.index < spec.n_layer),
        head_resident=spec.n_layer in store.resident,
        resident_bytes=store.resident_bytes(),
        host_bytes=sum(u.raw_bytes for u in streamed) + model.globals["token_embd.weight"].nbytes,
        staging_bytes=store.staging_bytes(),
        streamed_bytes_per_pass=sum(u.raw_bytes for u in streamed),
        **sizes,
    )


class GGUFBackend:
    """Forward passes of the llama-family Transformer over the WeightStore, with KVCache per sequence."""

    def __init__(self, model, store, transformer, tokenizer, device, dtype) -> None:
        self.model = model
        self.store = store
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype

    def new_cache(self, n_ctx: int):
        return KVCache.allocate(self.model.spec, n_ctx, self.device, self.dtype)

    def forward(self, cache, tokens, start, want, should_stop):
        return self.transformer.forward(cache, tokens, start, want, should_stop)

    def truncate(self, cache, n: int) -> None:
        """Positions >= n are simply overwritten later."""

    def close(self) -> None:
        self.store.close()
        if self.transformer.experts is not None:
            self.transformer.experts.close()
