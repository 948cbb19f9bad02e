"""Incremental detokenization and stop strings (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bloomz_runtime.text import IncrementalDetokenizer, StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, matched = matcher.feed(piece)
        out.append(text)
        if matched:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["Hello", " wor", "ld"], ["world"], ("Hello ", True)),
        (["a", "b", "c"], [], ("abc", False)),
        (["ab", "X", "Y", "cd"], ["XYZ"], ("abXYcd", False)),  # a near miss is released in full
        (["one\n", "two"], ["\n"], ("one", True)),
        (["foo", "ba", "r baz"], ["bar", "baz"], ("foo", True)),
        (["x", "END"], ["END", "ND"], ("x", True)),
    ],
)
def test_stop_matcher(pieces: list[str], stops: list[str], expected: tuple[str, bool]) -> None:
    assert feed_all(StopMatcher(stops), pieces) == expected


def test_stop_matcher_holds_back_only_a_possible_prefix() -> None:
    m = StopMatcher(["STOP"])
    assert m.feed("abcST") == ("abc", False)
    assert m.feed("x") == ("STx", False)


def test_incremental_detokenizer_matches_full_decode(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    text = "DeepSpeed is fast — très rapide, 速い! 12345"
    ids = tok(text, add_special_tokens=False).input_ids
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tok.decode(ids) == text
    # Multi-byte characters are held back until complete, never emitted as U+FFFD.
    assert all("\ufffd" not in p for p in pieces)
