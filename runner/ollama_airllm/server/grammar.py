"""GBNF grammars and JSON schemas as token constraints, through xgrammar.

`grammar` (llama.cpp GBNF, root rule `root`) goes through xgrammar's EBNF parser, `json_schema`
through its JSON-schema compiler. The constraint masks the logits before sampling and ends the
generation like an end-of-generation token once the grammar is complete.
"""

from __future__ import annotations

import json
import re
import threading

from .errors import ApiError
from .schema_grammar import json_schema_ebnf


class GrammarFactory:
    """Compiles grammars for one tokenizer (compiled grammars are cached by xgrammar)."""

    def __init__(self, tokenizer, n_vocab: int) -> None:
        self.tokenizer = tokenizer
        self.n_vocab = n_vocab
        self._compiler = None
        self._lock = threading.Lock()

    def _get_compiler(self):
        import xgrammar as xg

        with self._lock:
            if self._compiler is None:
                vocab = [
                    self.tokenizer.token_to_piece(i, special=True) for i in range(self.tokenizer.n_vocab)
                ]
                info = xg.TokenizerInfo(
                    vocab,
                    xg.VocabType.RAW,
                    vocab_size=self.n_vocab,
                    stop_token_ids=sorted(self.tokenizer.eog_ids),
                )
                self._compiler = xg.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def from_gbnf(self, text: str) -> GrammarConstraint:
        try:
            compiled = self._get_compiler().compile_grammar(text, root_rule_name="root")
        except Exception as e:  # xgrammar raises RuntimeError/ValueError with the parse error
            raise ApiError(f"Field 'grammar': failed to parse grammar: {_first_line(e)}") from None
        return GrammarConstraint(compiled, self.n_vocab)

    def from_json_schema(self, schema, field: str = "json_schema") -> GrammarConstraint:
        """`field` names where the schema came from (json_schema or response_format) in errors."""
        try:
            text = schema if isinstance(schema, str) else json.dumps(schema)
            compiled = self._get_compiler().compile_grammar(json_schema_ebnf(text))
        except Exception as e:
            raise ApiError(f"Field '{field}': \"json_schema\": {_first_line(e)}") from None
        return GrammarConstraint(compiled, self.n_vocab)


# xgrammar's C++ messages start with "[20:25:46] /project/cpp/grammar_parser.cc:820: "
_SOURCE_PREFIX = re.compile(r"^\s*(\[[\d:.]+\]\s*)?(\S+\.(cc|cpp|h|hpp|py):\d+:\s*)?")


def _first_line(e: Exception) -> str:
    """The first line of xgrammar's message, without its timestamp and internal source location."""
    lines = [_SOURCE_PREFIX.sub("", ln).strip() for ln in str(e).strip().splitlines()]
    return next((ln for ln in lines if ln and not ln.startswith("Stack trace")), type(e).__name__)


class GrammarConstraint:
    """The engine's Constraint protocol over an xgrammar GrammarMatcher."""

    def __init__(self, compiled, n_vocab: int) -> None:
        import xgrammar as xg

        self._xg = xg
        self.matcher = xg.GrammarMatcher(compiled)
        self.n_vocab = n_vocab
        self.bitmask = xg.allocate_token_bitmask(1, n_vocab)

    def apply(self, logits) -> None:
        self.matcher.fill_next_token_bitmask(self.bitmask)
        device = logits.device
        row = logits.to("cpu").unsqueeze(0) if device.type != "cpu" else logits.unsqueeze(0)
        self._xg.apply_token_bitmask_inplace(row, self.bitmask, vocab_size=self.n_vocab)
        if device.type != "cpu":
            logits.copy_(row.squeeze(0).to(device))

    def accept(self, token: int) -> None:
        if not self.matcher.is_terminated():
            self.matcher.accept_token(int(token))

    def is_terminated(self) -> bool:
        return self.matcher.is_terminated()
