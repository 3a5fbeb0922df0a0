"""Prompts as llama-server accepts them: a string, token ids, or a mix (tokenize_mixed)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ApiError, ContextError


@dataclass(frozen=True)
class PromptLimit:
    """A prompt must fit n_ctx tokens, and no token covers more than chars_per_token characters.

    A text longer than n_ctx * chars_per_token cannot fit: it is refused before it is tokenized, so a
    huge prompt costs neither seconds of tokenizer time nor gigabytes of token lists.
    """

    n_ctx: int
    chars_per_token: int

    def check(self, prompt) -> None:
        n_chars = (
            len(prompt)
            if isinstance(prompt, str)
            else sum(len(p) if isinstance(p, str) else 1 for p in prompt)
        )
        least = -(-n_chars // self.chars_per_token)
        if least > self.n_ctx:
            raise ContextError(least, self.n_ctx, at_least=True)


_SHAPE = (
    '"prompt" elements must be a string, a list of tokens, a JSON object containing a prompt string, '
    "or a list of mixed strings & tokens."
)


def _is_token(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def tokenize_mixed(tokenizer, prompt, add_special: bool, parse_special: bool) -> list[int]:
    """A string, or a list of strings and token ids; BOS only before a first string."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_special=add_special, parse_special=parse_special)
    out: list[int] = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            out += tokenizer.encode(p, add_special=add_special and i == 0, parse_special=parse_special)
        elif _is_token(p):
            out.append(p)
        else:
            raise ApiError(_SHAPE)
    return out


def tokenize_prompts(tokenizer, prompt, n_vocab: int, limit: PromptLimit | None = None) -> list[list[int]]:
    """One token list per prompt in `prompt` (llama-server's tokenize_input_prompts, text-only)."""
    if prompt is None:
        raise ApiError("[json.exception.out_of_range.403] key 'prompt' not found")
    if isinstance(prompt, list) and prompt and not any(_is_token(p) for p in prompt):
        subs = prompt  # several prompts
    else:
        subs = [prompt]
    out = []
    for sub in subs:
        if isinstance(sub, dict):
            if "multimodal_data" in sub:
                raise ApiError("Multimodal data provided, but model does not support multimodal requests.")
            if "prompt_string" not in sub:
                raise ApiError(_SHAPE)
            sub = sub["prompt_string"]
        if not isinstance(sub, str | list):
            raise ApiError(_SHAPE)
        if limit is not None:
            limit.check(sub)
        toks = tokenize_mixed(tokenizer, sub, True, True)
        if any(not 0 <= t < n_vocab for t in toks):
            raise ApiError("Prompt contains invalid tokens")
        out.append(toks)
    if not out:
        raise ApiError('"prompt" must not be empty')
    return out
