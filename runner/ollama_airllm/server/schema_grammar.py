"""JSON-schema grammars that always end in valid JSON, bounded the way llama.cpp's converter bounds its own.

xgrammar converts the schema to EBNF (strict mode: no properties the schema does not name, llama.cpp's
default too). Its grammar is then bounded where a model could otherwise never finish or write invalid JSON:
- whitespace between tokens: at most MAX_WHITESPACE characters per gap;
- numbers: at most 16 integer digits and 16 fraction or exponent digits;
- strings with maxLength: no raw control characters (xgrammar 0.2.8 lets U+0000..U+001F through there,
  which JSON forbids).
"""

from __future__ import annotations

MAX_WHITESPACE = 20
MAX_DIGITS = 16

# (xgrammar's rule text, the bounded one); tests/server/test_structured_output.py checks each takes effect.
_BOUNDS = (
    ("[1-9] [0-9]*", f"[1-9] [0-9]{{0,{MAX_DIGITS - 1}}}"),
    ("basic_number_digits{1, -1}", f"basic_number_digits{{1, {MAX_DIGITS}}}"),
    ('[^\\"\\\\\\r\\n]', '[^\\0-\\x1f\\"\\\\]'),
)


def json_schema_ebnf(schema: str) -> str:
    """The bounded EBNF grammar for a JSON schema (text); xgrammar's errors pass through."""
    import xgrammar as xg

    ebnf = str(xg.Grammar.from_json_schema(schema, strict_mode=True, max_whitespace_cnt=MAX_WHITESPACE))
    for old, new in _BOUNDS:
        ebnf = ebnf.replace(old, new)
    return ebnf
