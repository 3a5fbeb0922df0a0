"""Turn generated token bytes into text pieces, holding back what may be the start of a stop string."""

from __future__ import annotations

import codecs


def held_back(text: str, markers) -> int:
    """Length of the longest tail of `text` that is a proper prefix of one of `markers`: text that could
    still become a marker (a stop string, a tool-call tag) and must not be shown yet."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best


class TextStream:
    """Incremental UTF-8 decoding plus stop-string matching with partial-match holding (as llama-server does).

    push() returns the text that is safe to emit now; once a stop string appears, `stop_word` is set and
    nothing from it onwards is emitted. finish() flushes held-back text when generation ends otherwise.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # all decoded text (up to the stop word once found)
        self.emitted = 0
        self.stop_word: str | None = None

    def push(self, piece: bytes) -> str:
        if self.stop_word is not None:
            return ""
        start = max(self.emitted - max((len(s) for s in self.stops), default=0), 0)
        self.text += self._decoder.decode(piece)
        hit = self._find_stop(start)
        if hit is not None:
            pos, word = hit
            self.stop_word = word
            self.text = self.text[:pos]
            return self._emit(pos)
        return self._emit(len(self.text) - held_back(self.text, self.stops))

    def finish(self) -> str:
        if self.stop_word is None:
            self.text += self._decoder.decode(b"", final=True)
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out

    def _find_stop(self, start: int) -> tuple[int, str] | None:
        best = None
        for s in self.stops:
            i = self.text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best
