"""Tokenizers with llama.cpp's behaviour: built from GGUF metadata, or wrapping an HF tokenizer.

GGUF BPE ("gpt2") vocabularies become a `tokenizers` BPE model with the pre-tokenizer that llama.cpp
selects by `tokenizer.ggml.pre`. SentencePiece ("llama") vocabularies go through transformers' GGUF
converter. Control tokens are parsed from text only with parse_special=True and render as empty pieces
unless special=True (llama-server's defaults); user-defined tokens (e.g. <think>) are always parsed and shown.
"""

from __future__ import annotations

import json
from functools import lru_cache

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's vocabulary types (enum llama_vocab_type), by `tokenizer.ggml.model` and by HF model kind.
VOCAB_NONE, VOCAB_SPM, VOCAB_BPE, VOCAB_WPM, VOCAB_UGM = 0, 1, 2, 3, 4
GGUF_VOCAB_TYPES = {"llama": VOCAB_SPM, "gpt2": VOCAB_BPE, "bert": VOCAB_WPM, "t5": VOCAB_UGM}
HF_VOCAB_TYPES = {"BPE": VOCAB_BPE, "Unigram": VOCAB_UGM, "WordPiece": VOCAB_WPM}

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp) for the common `tokenizer.ggml.pre` values.
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3_REGEX = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
QWEN35_REGEX = (  # Qwen2's, with combining marks (\p{M}) kept in words
    _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
PRE_REGEX = {
    "llama-bpe": LLAMA3_REGEX,
    "llama3": LLAMA3_REGEX,
    "llama-v3": LLAMA3_REGEX,
    "smaug-bpe": LLAMA3_REGEX,
    "qwen2": QWEN2_REGEX,
    "deepseek-r1-qwen": QWEN2_REGEX,
    "qwen35": QWEN35_REGEX,
}
GPT2_PRES = ("gpt-2", "gpt2", "default", "")
# llama.cpp looks whole pre-tokenized words up in the vocabulary first only for Llama 3
IGNORE_MERGES_PRES = ("llama-bpe", "llama3", "llama-v3")

# Token texts llama.cpp treats as end-of-generation when they exist in the vocabulary (llama-vocab.cpp).
EOG_TEXTS = (
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<|return|>",
    "<|call|>",
)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode -> byte table (inverse of bytes_to_unicode)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class Tokenizer:
    """encode/decode with llama.cpp semantics over a `tokenizers.Tokenizer`."""

    def __init__(
        self,
        backend,
        pieces: list[bytes],
        token_types: list[int],
        bos_id: int | None,
        eos_id: int | None,
        eog_ids: set[int],
        add_bos: bool,
        add_eos: bool = False,
        *,
        vocab_type: int,
    ) -> None:
        # Two copies of the backend: one reads control tokens in the text as plain text, one parses them.
        self._specials_as_text = backend
        self._specials_parsed = backend.__class__.from_str(backend.to_str())
        self._specials_parsed.encode_special_tokens = False
        self._specials_as_text.encode_special_tokens = True
        self._pieces = pieces
        self._types = token_types
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eog_ids = frozenset(eog_ids)
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.n_vocab = len(pieces)
        self.vocab_type = vocab_type  # llama.cpp's numbering: 1 SPM, 2 BPE, 3 WPM, 4 UGM

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; add_special adds BOS/EOS as the model's metadata asks."""
        backend = self._specials_parsed if parse_special else self._specials_as_text
        # encode_batch releases the GIL while it works (encode does not), so a long text tokenized in a
        # worker thread does not stall the server's event loop
        ids = backend.encode_batch([text], add_special_tokens=False)[0].ids
        if add_special and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if add_special and self.add_eos and self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return ids

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token; control tokens are empty unless special=True."""
        if not 0 <= token < self.n_vocab:
            raise ValueError(f"token id {token} is outside the vocabulary (0..{self.n_vocab - 1})")
        if self._types[token] in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_UNUSED) and not special:
            return b""
        return self._pieces[token]

    def decode(self, ids: list[int], special: bool = False) -> str:
        return b"".join(self.token_to_piece(i, special) for i in ids).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return token in self.eog_ids


def from_gguf_metadata(meta: dict, path: str = "") -> Tokenizer:
    """Build the tokenizer from a GGUF's `tokenizer.ggml.*` metadata (GGUFModel.metadata['_tokenizer'])."""
    from .gguf_file import ModelFileError

    t = meta["_tokenizer"]
    model = t.get("tokenizer.ggml.model")
    tokens: list[str] = t.get("tokenizer.ggml.tokens") or []
    if not tokens:
        raise ModelFileError(path, "metadata key 'tokenizer.ggml.tokens' is missing or empty")
    types = list(t.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens))
    if model not in ("gpt2", "llama"):
        raise ModelFileError(path, f"tokenizer model {model!r} is not supported (supported: gpt2, llama)")
    pre = t.get("tokenizer.ggml.pre") or "default"
    if model == "gpt2" and pre not in GPT2_PRES and pre not in PRE_REGEX:
        raise ModelFileError(
            path,
            f"metadata tokenizer.ggml.pre is {pre!r}, a pre-tokenizer this runner does not know "
            f"(supported: {', '.join(p for p in (*GPT2_PRES, *PRE_REGEX) if p)})",
        )
    try:
        if model == "gpt2":
            backend, pieces = _bpe_backend(t, tokens, types)
        else:
            backend, pieces = _spm_backend(meta, tokens, types, path)
    except Exception as e:  # tokenizers raises bare Exception for e.g. a merge of unknown tokens
        raise ModelFileError(path, f"the tokenizer metadata cannot be used: {_one_line(e)}") from None
    bos = t.get("tokenizer.ggml.bos_token_id")
    eos = t.get("tokenizer.ggml.eos_token_id")
    eog = {
        i
        for i in (eos, t.get("tokenizer.ggml.eot_token_id"), t.get("tokenizer.ggml.eom_token_id"))
        if i is not None
    }
    eog |= {i for i, s in enumerate(tokens) if s in EOG_TEXTS and types[i] in (TOKEN_CONTROL, TOKEN_USER)}
    add_bos = t.get("tokenizer.ggml.add_bos_token")
    if add_bos is None:
        add_bos = model == "llama"
    return Tokenizer(
        backend,
        pieces,
        types,
        bos,
        eos,
        eog,
        bool(add_bos),
        bool(t.get("tokenizer.ggml.add_eos_token", False)),
        vocab_type=GGUF_VOCAB_TYPES[model],
    )


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _added(tokens: list[str], types: list[int]):
    from tokenizers import AddedToken

    return [
        AddedToken(s, special=types[i] == TOKEN_CONTROL, normalized=False)
        for i, s in enumerate(tokens)
        if types[i] in (TOKEN_CONTROL, TOKEN_USER)
    ]


def _bpe_backend(t: dict, tokens: list[str], types: list[int]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    merges = [tuple(m.split(" ", 1)) for m in t.get("tokenizer.ggml.merges") or []]
    vocab = {s: i for i, s in enumerate(tokens)}
    pre = t.get("tokenizer.ggml.pre") or "default"
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in IGNORE_MERGES_PRES))
    if pre in GPT2_PRES:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRE_REGEX[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens(_added(tokens, types))
    table = _byte_decoder()
    pieces = []
    for i, s in enumerate(tokens):
        if types[i] in (TOKEN_CONTROL, TOKEN_USER):
            pieces.append(s.encode())
        else:
            pieces.append(bytes(table[c] for c in s) if all(c in table for c in s) else s.encode())
    return backend, pieces


def _spm_backend(meta: dict, tokens: list[str], types: list[int], path: str):
    """SentencePiece vocabularies via transformers' GGUF tokenizer builder (Metaspace + BPE from scores)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    t = meta["_tokenizer"]
    d = {
        "tokenizer_type": "llama",
        "tokens": tokens,
        "scores": list(t.get("tokenizer.ggml.scores") or [0.0] * len(tokens)),
        "token_type": types,
        "add_prefix_space": t.get("tokenizer.ggml.add_space_prefix", True),
    }
    for src, dst in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("unknown_token_id", "unk_token_id"),
        ("padding_token_id", "pad_token_id"),
    ):
        if t.get(f"tokenizer.ggml.{src}") is not None:
            d[dst] = t[f"tokenizer.ggml.{src}"]
    if t.get("tokenizer.ggml.merges"):
        d["merges"] = t["tokenizer.ggml.merges"]
    backend, _ = convert_gguf_tokenizer(meta.get("general.architecture", "llama"), d)
    backend.add_tokens(_added(tokens, types))
    pieces = []
    for i, s in enumerate(tokens):
        if types[i] == TOKEN_BYTE and len(s) == 6 and s.startswith("<0x"):
            pieces.append(bytes([int(s[3:5], 16)]))
        else:
            pieces.append(s.replace("\u2581", " ").encode())
    return backend, pieces


def from_hf(hf_tokenizer) -> Tokenizer:
    """Wrap a transformers fast tokenizer (the airllm path)."""
    from tokenizers import Tokenizer as Backend

    spec = hf_tokenizer.backend_tokenizer.to_str()
    backend = Backend.from_str(spec)
    backend.post_processor = None
    n = len(hf_tokenizer)
    tokens = [""] * n
    for text, i in hf_tokenizer.get_vocab().items():
        if i < n:
            tokens[i] = text
    specials = set(hf_tokenizer.all_special_ids)
    added = set(hf_tokenizer.added_tokens_decoder)
    types = [TOKEN_CONTROL if i in specials else TOKEN_USER if i in added else TOKEN_NORMAL for i in range(n)]
    byte_level = '"type":"ByteLevel"' in spec.replace(" ", "")
    table = _byte_decoder()

    def piece(i: int, text: str) -> bytes:
        if types[i] != TOKEN_NORMAL:
            return text.encode()
        if byte_level and all(c in table for c in text):
            return bytes(table[c] for c in text)
        return hf_tokenizer.convert_tokens_to_string([text]).encode()

    pieces = [piece(i, text) for i, text in enumerate(tokens)]
    eos = hf_tokenizer.eos_token_id
    eog = {eos} if eos is not None else set()
    eog |= {i for i, text in enumerate(tokens) if text in EOG_TEXTS and i in specials | added}
    bos = hf_tokenizer.bos_token_id
    add_bos = bool(bos is not None and hf_tokenizer("a", add_special_tokens=True).input_ids[:1] == [bos])
    return Tokenizer(backend, pieces, types, bos, eos, eog, add_bos, vocab_type=_hf_vocab_type(spec))


def _hf_vocab_type(spec: str) -> int:
    """llama.cpp's vocab type of an HF tokenizer.json: a byte-fallback BPE is SentencePiece-style (SPM);
    a kind llama.cpp has no type for (e.g. WordLevel) is VOCAB_NONE."""
    model = json.loads(spec)["model"]
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return VOCAB_SPM
    return HF_VOCAB_TYPES.get(model.get("type"), VOCAB_NONE)
