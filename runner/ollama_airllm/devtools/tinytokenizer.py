"""Deterministic tokenizers (vocab 512) with ChatML chat tokens, for tiny test models.

Kinds, each as its family's HF tokenizer.json spells it:
  gpt2       byte-level BPE with GPT-2's split (ByteLevel use_regex)
  llama-bpe  byte-level BPE with Llama 3's split regex and ignore_merges
  qwen2      byte-level BPE with Qwen2's split regex (single digits); trained with Llama 3's split, so the
             vocabulary has multi-digit tokens that only the right split keeps apart
  spm        SentencePiece-style BPE (Llama 2, Mistral): Metaspace, byte fallback <0x00>..<0xFF>, and every
             merge the vocabulary implies (pairs whose concatenation is a token, by the token's rank)
"""

from __future__ import annotations

from functools import cache

from .corpus import CORPUS

VOCAB_SIZE = 512
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# Control tokens (special: hidden by skip_special_tokens) and user-defined ones that stay in the text,
# as in Qwen3's tokenizer where <think> and <tool_call> are plain added tokens.
CONTROL_TOKENS = [UNK, BOS, EOS, IM_START, IM_END]
USER_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]

# One OpenAI-style function tool, for tests and demos of the template's tool support.
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

# ChatML with tools, in the style of Qwen2.5's template: tools listed in the system turn, assistant tool calls
# rendered as <tool_call>{json}</tool_call>, tool results folded into a user turn as <tool_response>.
CHAT_TEMPLATE = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages and messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' }}{{- tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments ' }}
    {{- 'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n' }}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages and messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- elif not message.tool_calls %}
            {{- '\\n' }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if tool_call.function is defined %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
""".strip()


# The split regexes exactly as the HF tokenizer.json files of Llama 3 and Qwen2 spell them.
HF_SPLIT_REGEX = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
}
KINDS = ("gpt2", "llama-bpe", "qwen2", "spm")
SPM_BYTES = [f"<0x{b:02X}>" for b in range(256)]


def _byte_level(kind: str):
    """An untrained byte-level BPE tokenizer with `kind`'s split (qwen2: trained with Llama 3's)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(ignore_merges=kind == "llama-bpe"))
    if kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(HF_SPLIT_REGEX[kind]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    return tok


def _train(tok, vocab_size: int, specials: list[str], alphabet: list[str]):
    from tokenizers import trainers

    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return tok


def _implied_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece's merge rule as a merge list: every split of a token into two tokens, by its rank."""
    merges = []
    for text, rank in sorted(vocab.items(), key=lambda kv: kv[1]):
        splits = [(text[:i], text[i:]) for i in range(1, len(text))]
        merges += [(a, b, rank) for a, b in splits if a in vocab and b in vocab]
    return [(a, b) for a, b, _ in sorted(merges, key=lambda m: (m[2], vocab[m[0]], vocab[m[1]]))]


def _spm():
    """Llama 2 / Mistral style: <unk> <s> </s>, the chat tokens, 256 byte tokens, then the trained pieces;
    BOS is added to every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    fixed = [*CONTROL_TOKENS, *SPM_BYTES]
    trainee = Tokenizer(models.BPE())  # trained on words, so pieces are "▁word" as SentencePiece makes them
    trainee.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    _train(trainee, VOCAB_SIZE - len(USER_TOKENS) - len(SPM_BYTES), CONTROL_TOKENS, [])
    trained = sorted(trainee.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
    vocab = {t: i for i, t in enumerate(fixed)}
    for text, _ in trained:
        vocab.setdefault(text, len(vocab))
    bpe = models.BPE(vocab, _implied_merges(vocab), unk_token=UNK, fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    return tok


@cache
def _tokenizer_json(kind: str = "gpt2") -> str:
    """Train `kind` once per process; the result is the same in every process."""
    from tokenizers import AddedToken, pre_tokenizers

    if kind not in KINDS:
        raise ValueError(f"tokenizer kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "spm":
        tok = _spm()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS])
    else:
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainee = _byte_level("llama-bpe" if kind == "qwen2" else kind)
        tok = _train(trainee, VOCAB_SIZE - len(USER_TOKENS), CONTROL_TOKENS, alphabet)
        if kind == "qwen2":
            tok.model.ignore_merges = False
            tok.pre_tokenizer = _byte_level(kind).pre_tokenizer
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in USER_TOKENS])
    return tok.to_str()


def make_tokenizer(kind: str = "gpt2"):
    """The tiny tokenizer of `kind` (see KINDS): a PreTrainedTokenizerFast with the ChatML template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(kind)),
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
