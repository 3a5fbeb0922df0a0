"""GGUF tokenizers against the HF tokenizers they were converted from, for each family's rules.

Each tiny model's HF tokenizer.json is built the way its family's is (tinytokenizer.KINDS); the GGUF keeps
only what convert_hf_to_gguf writes (tokens, types, merges or scores, `tokenizer.ggml.pre`), so our
tokenizer has to rebuild the same rules from those keys.
"""

from __future__ import annotations

import gguf
import pytest
import transformers
from ollama_airllm.devtools import tinymodel
from ollama_airllm.engine import ModelFileError
from ollama_airllm.engine.gguf_file import open_gguf
from ollama_airllm.engine.tokenizer import from_gguf_metadata

TEXTS = [
    "Hello world! def add(a, b):\n    return a + b",
    "  spaces\tand\nnewlines  \n\n\n   x",
    "émoji 🙂 ok 👍🏽 — naïve café 日本語のテキスト",
    "digits 1 12 123 1234 12345 3.14159 2048x4096",
    "contractions: don't I'm we'll they're you've he'd IT'S O'Neil",
    "tabs\t\tand\r\nwindows\r\nline ends",
    "<|im_start|>user\nhi<|im_end|>\n<think>x</think>",
    "mixed   runs    of     spaces and punctuation!!! ??? ... ---",
    "Ünïcödé ΑΒΓ абв עברית عربى हिन्दी",
    " leading space and trailing space ",
    "",
]


def _pair(tiny_hf, tiny_gguf, kind):
    hf_tok = transformers.AutoTokenizer.from_pretrained(tiny_hf("llama", tokenizer=kind))
    tok = from_gguf_metadata(open_gguf(tiny_gguf("llama", "F32", tokenizer=kind)).metadata)
    return hf_tok, tok


@pytest.mark.parametrize("kind", ["gpt2", "llama-bpe", "qwen2", "spm"])
def test_encode_matches_hf(tiny_hf, tiny_gguf, kind):
    hf_tok, tok = _pair(tiny_hf, tiny_gguf, kind)
    for text in TEXTS:
        want = hf_tok.encode(text, add_special_tokens=False)
        assert tok.encode(text, add_special=False, parse_special=True) == want, text
        assert tok.encode(text, add_special=True, parse_special=True) == hf_tok.encode(text), text
        # pieces keep SentencePiece's prefix space (llama.cpp's token_to_piece); HF's decoder strips it
        prefix = " " if kind == "spm" else ""
        assert tok.decode(want, special=True).removeprefix(prefix) == hf_tok.decode(want)


def test_pre_tokenizer_regexes_split_differently(tiny_hf, tiny_gguf):
    """Both vocabularies hold "04"; Qwen2's split keeps digits single, Llama 3's groups up to three."""
    pieces = {}
    for kind in ("llama-bpe", "qwen2"):
        _, tok = _pair(tiny_hf, tiny_gguf, kind)
        pieces[kind] = [tok.decode([i]) for i in tok.encode("2048", add_special=False)]
    assert pieces == {"llama-bpe": ["2", "04", "8"], "qwen2": ["2", "0", "4", "8"]}


@pytest.mark.parametrize(("kind", "vocab_type"), [("gpt2", 2), ("llama-bpe", 2), ("spm", 1)])
def test_vocab_type(tiny_hf, tiny_gguf, kind, vocab_type):
    """llama.cpp's LLAMA_VOCAB_TYPE_SPM = 1, _BPE = 2, from the GGUF and from the HF tokenizer."""
    from ollama_airllm.engine.tokenizer import from_hf

    hf_tok, tok = _pair(tiny_hf, tiny_gguf, kind)
    assert tok.vocab_type == vocab_type
    assert from_hf(hf_tok).vocab_type == vocab_type


def test_unknown_pre_tokenizer_is_refused(tiny_hf, tmp_path):
    """An unknown tokenizer.ggml.pre is named, not silently replaced by Llama 3's rules."""
    path = tinymodel.write_gguf(tiny_hf("llama", tokenizer="llama-bpe"), tmp_path / "m.gguf")
    r = gguf.GGUFReader(path, "r+")
    field = r.fields["tokenizer.ggml.pre"]
    field.parts[field.data[0]][:] = memoryview(b"llama-bpX").cast("B")
    r.data.flush()
    with pytest.raises(ModelFileError, match=r"tokenizer.ggml.pre is 'llama-bpX'.*supported: .*llama-bpe"):
        from_gguf_metadata(open_gguf(path).metadata, str(path))


def test_hf_vocab_types():
    """llama.cpp's numbering for each HF tokenizer model kind (0 where llama.cpp has none)."""
    from ollama_airllm.engine.tokenizer import _hf_vocab_type
    from tokenizers import Tokenizer, models

    kinds = [
        (models.BPE(), 2),
        (models.BPE(byte_fallback=True), 1),
        (models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"), 3),
        (models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0), 4),
        (models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"), 0),
    ]
    assert [_hf_vocab_type(Tokenizer(m).to_str()) for m, _ in kinds] == [v for _, v in kinds]


def test_qwen35_split_keeps_combining_marks_in_words(tiny_gguf):
    """pre "qwen35" splits like transformers' Qwen3.5 regex: a combining mark stays with its letters."""
    import copy

    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

    meta = copy.deepcopy(open_gguf(tiny_gguf("qwen2", "F32", tokenizer="qwen2")).metadata)
    meta["_tokenizer"]["tokenizer.ggml.pre"] = "qwen35"
    ours = from_gguf_metadata(meta)._specials_as_text.pre_tokenizer
    ref = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    text = "cafe\u0301 nai\u0308ve a\u0300 123 don't"
    words = ours.pre_tokenize_str(text)
    assert words == ref.pre_tokenize_str(text)
    assert len(words) == 9  # "cafe\u0301" is one word, not "cafe" + "\u0301"
