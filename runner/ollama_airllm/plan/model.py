"""A model for the planner: an Ollama name resolved through the manifests in models_dir, or a GGUF path,
read from its header only (tensor infos and metadata; the weights are never loaded)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, UserError
from ..fit import ModelFacts, Tensor, facts_from_tensors, kv_bytes

REGISTRY = "registry.ollama.ai"
MODEL_LAYER = "application/vnd.ollama.image.model"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class ModelInfo:
    """The header facts the planner needs, and where they came from."""

    name: str
    path: Path
    architecture: str
    file_bytes: int
    n_ctx_train: int
    n_ctx: int
    """The context Ollama gives it: the profile's context_length x num_parallel, at most n_ctx_train."""
    facts: ModelFacts

    @property
    def model_bytes(self) -> int:
        """Ollama's llm.PredictServerVRAM: the file plus the f16 KV cache."""
        return self.file_bytes + self.facts.kv_bytes


def resolve(model: str, models_dir: Path) -> Path:
    """The GGUF file of `model`: an existing file path, else an Ollama name [host/][namespace/]name[:tag]."""
    if Path(model).is_file():
        return Path(model)
    if model.endswith(".gguf") or model.startswith(("/", ".", "~")):
        raise UserError(f"model {model}: no such file")
    manifest = manifest_path(model, models_dir)
    try:
        doc = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise UserError(f"model {model} not found: no manifest {manifest} (ollama pull {model})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"model {model}: cannot read its manifest {manifest} ({exc})") from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("mediaType") == MODEL_LAYER:
            digest = _DIGEST.fullmatch(str(layer.get("digest", "")))
            if digest is None:
                got = layer.get("digest")
                raise UserError(f"{manifest}: model layer digest {got!r} is not sha256:<64 hex digits>")
            blob = models_dir / "blobs" / f"sha256-{digest.group(1)}"
            if not blob.is_file():
                raise UserError(f"model {model}: its blob {blob} is missing")
            return blob
    raise UserError(f"{manifest}: no layer of type {MODEL_LAYER}")


def manifest_path(model: str, models_dir: Path) -> Path:
    """manifests/HOST/NAMESPACE/NAME/TAG under models_dir, as Ollama stores a pulled model."""
    name, _, tag = model.partition(":")
    parts = name.split("/")
    if not 1 <= len(parts) <= 3 or not all(_PART.fullmatch(p) for p in [*parts, tag or "latest"]):
        raise UsageError(
            f"model {model!r} is not a GGUF file or an Ollama name ([host/][namespace/]name[:tag], "
            "letters, digits, '.', '_', '-')"
        )
    host, namespace = REGISTRY, "library"
    if len(parts) == 3:
        host, namespace = parts[0], parts[1]
    elif len(parts) == 2:
        namespace = parts[0]
    return models_dir / "manifests" / host / namespace / parts[-1] / (tag or "latest")


def read_model(path: Path, name: str, context_length: int, num_parallel: int) -> ModelInfo:
    """Read `path`'s GGUF header into a ModelInfo for a context of context_length x num_parallel."""
    from gguf import GGMLQuantizationType, GGUFReader

    try:
        reader = GGUFReader(path)
    except (OSError, ValueError, IndexError, KeyError) as exc:  # gguf raises these on bad headers
        raise UsageError(f"{path}: not a readable GGUF file ({exc})") from None
    meta = _Meta(reader)
    arch = meta.string("general.architecture")
    n_layer = meta.int(f"{arch}.block_count")
    if not arch or n_layer <= 0:
        raise UsageError(f"{path}: the GGUF header has no general.architecture or {arch}.block_count")
    n_ctx_train = meta.int(f"{arch}.context_length")
    n_ctx = context_length * num_parallel
    if 0 < n_ctx_train < context_length:
        n_ctx = n_ctx_train * num_parallel
    kv = kv_bytes(n_layer, meta.int(f"{arch}.attention.head_count_kv", low=True),
                  meta.int(f"{arch}.embedding_length"), meta.int(f"{arch}.attention.head_count"), n_ctx)
    tensors = [
        Tensor(t.name, GGMLQuantizationType(t.tensor_type).name.lower(), int(t.n_bytes), int(t.n_elements))
        for t in reader.tensors
    ]
    facts = facts_from_tensors(tensors, n_layer, meta.int(f"{arch}.expert_count"),
                               meta.int(f"{arch}.expert_used_count"), kv)
    return ModelInfo(name, path, arch, path.stat().st_size, n_ctx_train, n_ctx, facts)


class _Meta:
    """Typed reads of a GGUFReader's metadata."""

    def __init__(self, reader) -> None:
        self.fields = reader.fields

    def _values(self, key: str) -> list:
        f = self.fields.get(key)
        if f is None or not f.data:
            return []
        return [f.parts[i].tolist() for i in f.data]

    def string(self, key: str) -> str:
        f = self.fields.get(key)
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace") if f is not None and f.data else ""

    def int(self, key: str, low: bool = False) -> int:
        """An integer (or an array's maximum; its minimum with `low`), 0 when absent."""
        numbers = [int(v[0]) for v in self._values(key) if isinstance(v, list) and v]
        numbers = [n for n in numbers if n >= 0]
        if not numbers:
            return 0
        return min(numbers) if low else max(numbers)
