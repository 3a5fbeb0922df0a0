"""Stop strings with partial-match holding, and UTF-8 split across tokens."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from ollama_airllm.engine.textstream import TextStream


def _run(pieces: list[bytes], stops: list[str]) -> tuple[list[str], TextStream]:
    s = TextStream(stops)
    out = [s.push(p) for p in pieces]
    if s.stop_word is None:
        out.append(s.finish())
    return out, s


def test_stop_word_split_over_tokens_is_never_emitted():
    out, s = _run([b"Hello ", b"wor", b"ld", b"<|", b"EN", b"D|>", b" more"], ["<|END|>"])
    assert s.stop_word == "<|END|>"
    assert "".join(out) == "Hello world"
    assert out[3] == "" and out[4] == ""  # held while it could be a stop string


def test_held_text_is_released_when_it_turns_out_not_to_be_a_stop():
    out, s = _run([b"a <", b"|x", b" b"], ["<|END|>"])
    assert s.stop_word is None
    assert out == ["a ", "<|x", " b", ""]


def test_earliest_of_several_stops_and_text_before_it():
    out, s = _run([b"one two three"], ["three", "two"])
    assert s.stop_word == "two" and "".join(out) == "one "


def test_utf8_split_across_tokens():
    euro = "€".encode()
    out, _ = _run([b"x", euro[:1], euro[1:2], euro[2:], b"y"], [])
    assert out == ["x", "", "", "€", "y", ""]


def test_finish_flushes_partial_match():
    out, s = _run([b"abc STO"], ["STOP"])
    assert out == ["abc ", "STO"] and s.stop_word is None


@settings(max_examples=200, deadline=None, database=None)
@given(
    text=st.text(alphabet="ab<|>é ", max_size=40),
    stops=st.lists(st.text(alphabet="ab<|>é", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
)
def test_any_split_emits_the_text_up_to_the_first_completed_stop(text, stops, cuts):
    """However the bytes are split, the output is the text up to where a stop string first completes."""
    data = text.encode()
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    out, s = _run([data[a:b] for a, b in itertools.pairwise(bounds)], stops)
    joined = "".join(out)
    assert text.startswith(joined)
    assert not any(w in joined for w in stops)
    if s.stop_word is None:
        assert joined == text and not any(w in text for w in stops)
    else:
        assert text[len(joined) :].startswith(s.stop_word)
