"""Where a harmony reply stands, token by token: in a header, in a message's content, between
messages, or ended — and, once a header closes, which channel and recipient it named.

The engine needs only this much of harmony to know when a grammar applies, so it works on
token ids with no text parsing beyond the header words (the API's parser does the rest).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, auto

from oss_serve.harmony import encoding as harmony_ids

_CHANNEL_WORD = re.compile(r"^\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"to=([^\s<]+)")


class Phase(Enum):
    HEADER = auto()  # after <|start|>, up to <|message|>
    CONTENT = auto()  # a message's text, up to <|end|> / <|return|> / <|call|>
    BETWEEN = auto()  # after <|end|>, before the next <|start|>
    ENDED = auto()  # after <|return|> or <|call|>: the turn is over


@dataclass(frozen=True)
class MessageHeader:
    channel: str | None
    recipient: str | None  # as written, e.g. "functions.get_weather"; None: no recipient

    @property
    def is_final_answer(self) -> bool:
        # `final <|constrain|>json` (how structured answers are often written) is still final.
        return self.channel == "final" and self.recipient is None

    @property
    def is_reasoning(self) -> bool:
        return self.channel == "analysis" and self.recipient is None


class HarmonyTracker:
    def __init__(self, decode: Callable[[list[int]], str], phase: Phase = Phase.HEADER) -> None:
        self._decode = decode
        self.phase = phase
        self._header_ids: list[int] = []
        self.header: MessageHeader | None = None  # of the message whose content is open or last closed

    @classmethod
    def after_prompt(cls, prompt_ids: Sequence[int], decode: Callable[[list[int]], str]) -> HarmonyTracker:
        """The state a reply starts in: the prompt ends inside the assistant header
        (`<|start|>assistant`, maybe followed by a prefilled header such as a forced call's)."""
        tracker = cls(decode)
        start = max((i for i, token in enumerate(prompt_ids) if token == harmony_ids.START), default=-1)
        for token in prompt_ids[start + 1:]:
            tracker.feed(token)
        return tracker

    @property
    def header_length(self) -> int:
        """Tokens of the open header so far (0 outside a header)."""
        return len(self._header_ids) if self.phase == Phase.HEADER else 0

    @property
    def header_has_channel(self) -> bool:
        """Inside a header: whether it already named its channel."""
        return harmony_ids.CHANNEL in self._header_ids

    def feed(self, token: int) -> bool:
        """Advance by one token; True when it opened a message's content (the header is known)."""
        if token in (harmony_ids.RETURN, harmony_ids.CALL):
            self.phase = Phase.ENDED
        elif token == harmony_ids.START:
            self.phase, self._header_ids = Phase.HEADER, []
        elif self.phase == Phase.HEADER:
            if token == harmony_ids.MESSAGE:
                self.header = self._parse_header(self._header_ids)
                self.phase = Phase.CONTENT
                return True
            self._header_ids.append(token)
        elif token == harmony_ids.END:
            self.phase = Phase.BETWEEN
        return False

    def _parse_header(self, ids: list[int]) -> MessageHeader:
        channel = None
        segments: list[tuple[int | None, list[int]]] = [(None, [])]  # (special that opened it, ordinary ids)
        for token in ids:
            if token in harmony_ids.NAMED_SPECIAL_TOKENS:
                segments.append((token, []))
            else:
                segments[-1][1].append(token)
        recipient = None
        for opener, segment_ids in segments:
            text = self._decode(segment_ids) if segment_ids else ""
            if opener == harmony_ids.CHANNEL and channel is None:
                match = _CHANNEL_WORD.match(text)
                channel = match.group(1) if match else None
            if opener != harmony_ids.CONSTRAIN and recipient is None:
                found = _RECIPIENT.search(text)
                recipient = found.group(1) if found else None
        return MessageHeader(channel, recipient)
