"""Layer-streaming inference engine: runs GGUF files (or HF checkpoints via airllm) larger than the device.

    from ollama_airllm.engine import Engine, EngineConfig, SamplingParams
    eng = Engine.load("/var/lib/ollama/blobs/sha256-...", EngineConfig(device="auto", n_ctx=8192, n_slots=2))
    ids = eng.tokenizer.encode("Hello", add_special=True, parse_special=True)
    res = eng.generate(0, ids, SamplingParams(temperature=0, n_predict=32), on_token=print)

The README's section "The layer-streaming engine" describes how it works. Modules: engine (Engine:
slots, generation, embeddings), types (EngineInfo, GenerationResult, Backend), gguf_backend and hf_airllm
(one per backend), gguf_file (validation, the mapping), weights (residency and streaming), model (the
forward pass), tokenizer, sampling, textstream (stop strings).
"""

from .config import EngineConfig
from .engine import Engine
from .gguf_file import ModelFileError
from .sampling import SamplingParams, TokenProbs
from .tokenizer import Tokenizer
from .types import Constraint, ContextLengthError, EngineInfo, GenerationResult

__all__ = [
    "Constraint",
    "ContextLengthError",
    "Engine",
    "EngineConfig",
    "EngineInfo",
    "GenerationResult",
    "ModelFileError",
    "SamplingParams",
    "TokenProbs",
    "Tokenizer",
]
