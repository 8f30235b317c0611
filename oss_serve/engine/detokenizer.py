"""Incremental detokenization in the caller's process, with stop-string handling.

Text is emitted only when it is final: a trailing partial UTF-8 character (decoded as U+FFFD) is
held until the bytes that complete it arrive, and while a request runs the last `longest stop - 1`
characters are held back too, since they might begin a stop string. When the engine reports a
matched stop string, the text is cut before it (or after it with include_stop_str_in_output).
"""
from __future__ import annotations

from oss_serve.engine.sampling_params import SamplingParams

_REPLACEMENT = "\ufffd"
# Tokens a partial character may span (a UTF-8 character is at most 4 bytes).
_MAX_PARTIAL_TOKENS = 4


class IncrementalDetokenizer:
    def __init__(self, tokenizer, params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        self.stops = [s for s in params.stop if s]
        self.include_stop = params.include_stop_str_in_output
        self.hold_back = max((len(s) for s in self.stops), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""  # decoded text of token_ids[:self._read_offset]
        self._read_offset = 0
        self._emitted = 0  # characters of self.text already returned
        self._final_length: int | None = None  # set once a stop string cuts the text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _absorb(self, flush: bool) -> None:
        """Move newly complete text from the unread tokens into self.text."""
        pending = self.token_ids[self._read_offset:]
        if not pending:
            return
        piece = self._decode(pending)
        if piece.endswith(_REPLACEMENT) and not flush and len(pending) < _MAX_PARTIAL_TOKENS:
            return  # probably the start of a multi-byte character: wait for the rest
        self.text += piece
        self._read_offset = len(self.token_ids)

    def _cut_at_stop(self, matched_stop: str | None) -> None:
        if self._final_length is not None:
            return
        candidates = [matched_stop] if matched_stop else self.stops
        search_from = max(0, self._emitted - self.hold_back)
        best: tuple[int, str] | None = None
        for stop in candidates:
            index = self.text.find(stop, search_from)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        if best is not None:
            index, stop = best
            self._final_length = index + len(stop) if self.include_stop else index

    def feed(self, new_token_ids: list[int], finished: bool = False, matched_stop: int | str | None = None) -> str:
        """Add tokens; returns the text that became final."""
        self.token_ids.extend(new_token_ids)
        self._absorb(flush=finished)
        if self.stops:
            self._cut_at_stop(matched_stop if isinstance(matched_stop, str) else None)
        if self._final_length is not None:
            end = self._final_length
        elif finished:
            end = len(self.text)
        else:
            end = len(self.text) - self.hold_back
        if end <= self._emitted:
            return ""
        new_text = self.text[self._emitted:end]
        self._emitted = end
        return new_text

    @property
    def output_text(self) -> str:
        return self.text[:self._emitted]


def detokenize_all(tokenizer, token_ids: list[int], params: SamplingParams, matched_stop: int | str | None) -> str:
    """The final text of a finished request in one go (offline API)."""
    detokenizer = IncrementalDetokenizer(tokenizer, params)
    detokenizer.feed(token_ids, finished=True, matched_stop=matched_stop)
    return detokenizer.output_text
