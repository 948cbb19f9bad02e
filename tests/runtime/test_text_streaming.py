"""Streaming text edge cases: spacing and special tokens kept as a full decode has them, flushes
mid-stream, the first of repeated stop strings, nothing after a match."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from bloomz_runtime.text import IncrementalDetokenizer, StopMatcher


class PythonDecoder:
    """A tokenizer with no Rust backend to call (as a slow tokenizer): only its own decode(), which
    here is the real tokenizer's, with the checkpoint's clean-up default."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def decode(self, ids: list[int], **options: Any) -> str:
        return str(self._tokenizer.decode(ids, **options))


@pytest.fixture(params=["backend", "decode"])
def view(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """Both decoding paths: a fast tokenizer's backend, and a tokenizer's own decode()."""
    return (lambda tok: tok) if request.param == "backend" else PythonDecoder


def stream(tokenizer: Any, ids: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add(i) for i in ids]
    return [*pieces, detok.flush()]


def test_spaces_before_punctuation_are_kept(tokenizer: Any, view: Callable[[Any], Any]) -> None:
    text = "Hello , world . Is it ? Yes !"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    cleaning = copy.copy(tokenizer)
    cleaning.clean_up_tokenization_spaces = True  # as some checkpoints' tokenizer configs say
    assert cleaning.decode(ids) != text
    for tok in (tokenizer, cleaning):
        assert "".join(stream(view(tok), ids)) == text  # no "clean-up" of the model's spacing


def test_special_tokens_are_not_text(tokenizer: Any, view: Callable[[Any], Any]) -> None:
    ids = tokenizer(" one two", add_special_tokens=False).input_ids
    special = [tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id]
    mixed = [ids[0], *special, *ids[1:]]
    assert "".join(stream(view(tokenizer), mixed)) == " one two"


def test_a_fast_tokenizer_is_decoded_by_its_backend_directly(tokenizer: Any) -> None:
    """The Python wrapper around the Rust decoder costs a third of the time, twice per token per row."""
    assert tokenizer.is_fast
    assert IncrementalDetokenizer(tokenizer)._backend is tokenizer.backend_tokenizer
    assert IncrementalDetokenizer(PythonDecoder(tokenizer))._backend is None


def test_a_flush_mid_stream_then_more_tokens(tokenizer: Any, view: Callable[[Any], Any]) -> None:
    ids = tokenizer(" alpha beta gamma", add_special_tokens=False).input_ids
    detok = IncrementalDetokenizer(view(tokenizer))
    first = "".join(detok.add(i) for i in ids[:2]) + detok.flush()
    rest = "".join(detok.add(i) for i in ids[2:]) + detok.flush()
    assert first + rest == " alpha beta gamma"
    assert rest != ""


def test_the_first_occurrence_of_a_stop_string_cuts() -> None:
    assert StopMatcher(["STOP"]).feed("aSTOPbSTOPc") == ("a", True)
    assert StopMatcher(["x", "STOP"]).feed("aSTOPx") == ("a", True)


def test_nothing_is_left_after_a_match_or_a_flush() -> None:
    m = StopMatcher(["END"])
    assert m.feed("abcEN") == ("abc", False)
    assert m.feed("Dtail") == ("", True)
    assert m.flush() == ""
    m = StopMatcher(["END"])
    assert m.feed("xE") == ("x", False)
    assert m.flush() == "E"
    assert m.flush() == ""
    assert m.feed("y") == ("y", False)
