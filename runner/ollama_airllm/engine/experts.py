"""Expert-aware streaming: after routing, fetch only the experts a layer's tokens selected.

Expert e of a 3-D stack [n_expert, rows, cols] is the contiguous byte range e*size..(e+1)*size of the raw
tensor, so it is sliced from the mapped file without touching the other experts.

- Resident experts (those of the layers the budget keeps on the device) are used in place.
- CUDA/HIP: other experts are copied from the mapped file to the device and kept in an LRU cache whose
  capacity is the budget's share for experts; a hit costs no transfer. Block types are QWeights made by
  the WeightStore (its shared work buffer, sized for the experts too, and its kernels backend).
- CPU: the mapped file is the cache (the page cache holds it), so plan_experts gives no LRU cache and a
  fetch uses the mapped bytes (dense: F32 in place, other types dequantized; no QWeight, so no work
  buffer); an expert that is not resident counts as read.
- fetch_all (airllm's way, for the benchmark): every expert of a streamed layer is read on each pass, and
  only the routed ones are computed.

ExpertStats counts tokens, uses, hits and the bytes read (touched experts that were neither resident nor
cached), for /props and the benchmark.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .dequant import FLOAT_VIEWS, dequantize
from .gguf_file import GGUFModel, TensorRef
from .linear import QWeight
from .moe import Expert
from .types import ExpertStats
from .weights import WeightStore

STACKS = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")
BIASES = ("ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias")


def moe_layers(model: GGUFModel) -> list[int]:
    """The layers with expert stacks."""
    return [i for i, layer in enumerate(model.layers) if STACKS[0] in layer]


def expert_bytes(model: GGUFModel, layer: int) -> int:
    """Raw bytes of one expert (gate + up + down slices) of `layer`."""
    refs = model.layers[layer]
    return sum(refs[k].nbytes // refs[k].shape[0] for k in STACKS)


def plan_experts(
    model: GGUFModel, resident_units: set[int], budget_left: int, cuda: bool, dtype: torch.dtype
) -> tuple[set[int], int]:
    """(layers whose experts stay resident, LRU cache bytes) within `budget_left`.

    The experts of resident layers come first, in layer order, while they fit (cost: raw bytes on the
    device, dense bytes in CPU memory); on CUDA what is left caches streamed experts, at most all of them.
    """
    if model.spec.moe is None:
        return set(), 0
    item = torch.empty((), dtype=dtype).element_size()
    resident: set[int] = set()
    streamed_total = 0
    for i in moe_layers(model):
        raw = expert_bytes(model, i) * model.spec.moe.n_expert
        dense = sum(model.layers[i][k].numel for k in STACKS) * item
        cost = raw if cuda else dense
        if i in resident_units and cost <= budget_left:
            resident.add(i)
            budget_left -= cost
        else:
            streamed_total += raw
    return resident, min(max(budget_left, 0), streamed_total) if cuda else 0


class ExpertStore:
    """Hands out the selected experts of a layer as compute-ready weights (see the module docstring)."""

    def __init__(
        self,
        weights: WeightStore,
        resident_layers: set[int],
        cache_bytes: int = 0,
        fetch_all: bool = False,
    ) -> None:
        """weights: the model's WeightStore. The experts live on its device in its dtype, follow its
        staging (blocks on the device) and their QWeights share its work buffer and kernels backend."""
        model = weights.model
        moe = model.spec.moe
        if moe is None:
            raise ValueError(f"{model.path}: not a mixture-of-experts model")
        self.model = model
        self.device = weights.device
        self.dtype = weights.dtype
        self._blocks = weights.staged
        self._qweight = weights.qweight
        self.layers = moe_layers(model)
        self._first = self.layers[0]
        self._size = {i: expert_bytes(model, i) for i in self.layers}
        self._cache: OrderedDict[tuple[int, int], Expert] = OrderedDict()
        self._cached_bytes = 0
        self._biases = {i: self._load_biases(i) for i in self.layers}
        self._resident = {
            (i, e): self._load(i, e, copy=True) for i in sorted(resident_layers) for e in range(moe.n_expert)
        }
        self.stats = ExpertStats(
            n_expert=moe.n_expert,
            n_used=moe.n_used,
            n_moe_layers=len(self.layers),
            expert_bytes=max(self._size.values()),
            resident_experts=len(self._resident),
            cache_bytes=cache_bytes,
            fetch_all=fetch_all,
        )

    def resident_bytes(self) -> int:
        """Device (or RAM) bytes of the resident experts."""
        return sum(_nbytes(x) for ex in self._resident.values() for x in (ex.gate, ex.up, ex.down))

    def fetch(self, layer: int, experts: list[int], n_tokens: int = 1) -> dict[int, Expert]:
        """The weights of `experts` of `layer` (a batch's union), from residency, the cache or the file."""
        st = self.stats
        if layer == self._first:
            st.tokens += n_tokens
        if st.fetch_all:
            self._read_all(layer, set(experts))
        out = {}
        for e in experts:
            key = (layer, e)
            st.touched += 1
            if key in self._resident:
                st.hits += 1
                out[e] = self._resident[key]
            elif key in self._cache:
                st.hits += 1
                self._cache.move_to_end(key)
                out[e] = self._cache[key]
            else:
                if not st.fetch_all:
                    st.bytes_read += self._size[layer]
                out[e] = self._load(layer, e, copy=False)
                self._remember(key, out[e])
        return out

    def close(self) -> None:
        self._resident.clear()
        self._cache.clear()

    # --- internals ---------------------------------------------------------------------------------------

    def _read_all(self, layer: int, routed: set[int]) -> None:
        """fetch_all: read every non-resident expert of `layer` (the routed ones are counted too)."""
        for e in range(self.stats.n_expert):
            if (layer, e) in self._resident:
                continue
            self.stats.bytes_read += self._size[layer]
            if e not in routed:
                self._load(layer, e, copy=True)

    def _remember(self, key: tuple[int, int], ex: Expert) -> None:
        """Keep a streamed expert in the device LRU cache, evicting the least recently used ones."""
        size = self._size[key[0]]
        cap = self.stats.cache_bytes
        if size > cap:
            return
        while self._cached_bytes + size > cap:
            old, _ = self._cache.popitem(last=False)
            self._cached_bytes -= self._size[old[0]]
        self._cache[key] = ex
        self._cached_bytes += size

    def _slice(self, ref: TensorRef, e: int) -> torch.Tensor:
        """Expert e's raw bytes of a 3-D stack: a view of the mapped file."""
        per = ref.nbytes // ref.shape[0]
        return self.model.raw(ref)[e * per : (e + 1) * per]

    def _weight(self, ref: TensorRef, e: int, copy: bool) -> torch.Tensor | QWeight:
        """Expert e's 2-D weight of a stack. CPU: dense (F32 in place unless `copy`); CUDA (staged): on
        the device, block types as QWeight."""
        raw, shape = self._slice(ref, e), tuple(ref.shape[1:])
        if not self._blocks:
            w = dequantize(raw, ref.qtype, shape, self.dtype)
            return w.clone() if copy and self.model.is_file_view(w) else w
        raw = raw.to(self.device, copy=copy)
        if ref.qtype in FLOAT_VIEWS:
            return dequantize(raw, ref.qtype, shape, self.dtype)
        return self._qweight(raw, ref.qtype, shape)

    def _load(self, layer: int, e: int, copy: bool) -> Expert:
        refs = self.model.layers[layer]
        gate, up, down = (self._weight(refs[k], e, copy) for k in STACKS)
        biases = self._biases[layer]
        return Expert(gate, up, down, *(None if b is None else b[e] for b in biases))

    def _load_biases(self, layer: int) -> tuple[torch.Tensor | None, ...]:
        """gpt-oss's expert biases [n_expert, n]: small, kept on the device for every layer."""
        refs = self.model.layers[layer]
        out = []
        for k in BIASES:
            r = refs.get(k)
            dense = None if r is None else dequantize(self.model.raw(r), r.qtype, r.shape)
            out.append(None if dense is None else dense.to(self.device, self.dtype, copy=True))
        return tuple(out)


def _nbytes(x: torch.Tensor | QWeight) -> int:
    t = x.raw if isinstance(x, QWeight) else x
    return t.numel() * t.element_size()


def build_expert_store(model: GGUFModel, weights: WeightStore, budget_left: int) -> ExpertStore | None:
    """The ExpertStore of a MoE model beside its WeightStore (plan_experts within `budget_left`, for
    the experts of the store's resident layers), None for a dense one."""
    if model.spec.moe is None:
        return None
    layers, cache = plan_experts(model, weights.resident, budget_left, weights.staged, weights.dtype)
    return ExpertStore(weights, layers, cache)
