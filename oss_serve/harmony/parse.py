"""Tolerant, incremental parsing of harmony model output into messages.

openai-harmony's parser raises on the malformed output models really produce (REFERENCE
section 3). This one is a small state machine over token ids that never raises: it returns
every message it could make sense of, streams message text as it arrives, and never puts
harmony markup into message text.

States: between messages -> header (after `<|start|>`, up to `<|message|>`) -> content (up to
`<|end|>`, `<|return|>` or `<|call|>`).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from oss_serve.harmony import encoding as harmony_ids
from oss_serve.harmony.encoding import get_harmony_encoding

CHANNELS = ("analysis", "commentary", "final")
ROLES = ("assistant", "user", "system", "developer", "tool")
FUNCTIONS_PREFIX = "functions."
DEFAULT_BUILTIN_NAMESPACES = ("browser", "python", "container")
# A header that runs this long without `<|message|>` is taken to be text, not a header.
MAX_HEADER_TOKENS = 48
# Bytes of one character can span a few tokens; past this many we stop waiting.
MAX_PENDING_DECODE_TOKENS = 8
_CONSTRAIN_WORD = re.compile(r"<\|constrain\|>\s*([^\s<]*)")
_LEADING_HEADER_WORDS = re.compile(r"^\s*(?:(?:assistant|analysis|commentary|final|json|code|to=\S*)(?:\s+|$))*")
_TERMINATOR_NAMES = {harmony_ids.END: "end", harmony_ids.RETURN: "return", harmony_ids.CALL: "call",
                     harmony_ids.ENDOFTEXT: "return"}


@dataclass
class ParsedMessage:
    channel: str | None = None
    recipient: str | None = None  # normalised: "functions.NAME", "browser.search", "python", ...
    content_type: str | None = None  # "json", "code", ...
    text: str = ""
    role: str = "assistant"
    token_count: int = 0  # content tokens, markup excluded
    terminator: Literal["end", "return", "call", None] = None  # None: cut off (length, abort)

    @property
    def function_name(self) -> str | None:
        if self.recipient and self.recipient.startswith(FUNCTIONS_PREFIX):
            return self.recipient[len(FUNCTIONS_PREFIX):]
        return None

    @property
    def is_function_call(self) -> bool:
        return self.function_name is not None

    @property
    def is_reasoning(self) -> bool:
        """Chain of thought: analysis text, and built-in tool calls (which live on analysis)."""
        return not self.is_function_call and (self.channel == "analysis" or self.recipient is not None)


@dataclass(frozen=True)
class ParseEvent:
    """`start`: message `index`'s header is known; `text`: more of its text; `end`: it is done."""
    kind: Literal["start", "text", "end"]
    index: int
    message: ParsedMessage
    text: str = ""


@dataclass
class _Header:
    pieces: list[tuple[bool, str]] = field(default_factory=list)  # (is special token, text)
    explicit: bool = True  # opened by <|start|>, not inferred from stray text
    token_count: int = 0

    def text(self, *, with_specials: bool) -> str:
        return "".join(text for special, text in self.pieces if with_specials or not special)


class HarmonyOutputParser:
    """Feed token ids as they are generated; get message events back.

    `function_names` and `builtin_namespaces` help repair recipients (a bare function name,
    `json` glued onto the name). Start it with the tokens that open the assistant's reply in
    the prompt, e.g. `<|start|>assistant` (the default) plus any prefill.
    """

    def __init__(self, *, function_names: Iterable[str] = (),
                 builtin_namespaces: Iterable[str] = DEFAULT_BUILTIN_NAMESPACES) -> None:
        self._encoding = get_harmony_encoding()
        self.function_names = set(function_names)
        self.builtin_namespaces = set(builtin_namespaces)
        self.messages: list[ParsedMessage] = []
        self._header: _Header | None = None
        # The message whose content tokens are being read now (None between messages and in headers).
        self.open_message: ParsedMessage | None = None
        self._pending_ids: list[int] = []  # content tokens not yet decodable to whole characters

    def start_assistant_reply(self, prefill_ids: Sequence[int] = ()) -> list[ParseEvent]:
        """Put the parser where the prompt leaves the model: inside `<|start|>assistant`."""
        return self.feed([harmony_ids.START, harmony_ids.ASSISTANT, *prefill_ids])

    def feed(self, token_ids: Iterable[int]) -> list[ParseEvent]:
        events: list[ParseEvent] = []
        for token_id in token_ids:
            self._feed_one(int(token_id), events)
        self._flush_text(events, final=False)
        return events

    def finish(self) -> list[ParseEvent]:
        """Close whatever is open (the output ended: stop, length or abort)."""
        events: list[ParseEvent] = []
        if self._header is not None:
            self._header_to_text(events)
        if self.open_message is not None:
            self._close(None, events)
        return events

    # --- state machine ---

    def _feed_one(self, token_id: int, events: list[ParseEvent]) -> None:
        special = harmony_ids.FIRST_SPECIAL_ID <= token_id <= harmony_ids.LAST_SPECIAL_ID
        if self.open_message is not None:
            self._feed_content(token_id, special, events)
        elif self._header is not None:
            self._feed_header(token_id, special, events)
        else:
            self._feed_between(token_id, special, events)

    def _feed_between(self, token_id: int, special: bool, events: list[ParseEvent]) -> None:
        if token_id == harmony_ids.START:
            self._header = _Header()
        elif token_id == harmony_ids.CHANNEL or not special:
            # `<|end|><|channel|>final...`: the model forgot `<|start|>assistant`. Text after `<|end|>`
            # without a new `<|start|>`: a header missing its start, or plain text. Which one shows at
            # `<|message|>` or at the header's length limit.
            self._header = _Header(explicit=False)
            self._feed_header(token_id, special, events)
        # other specials between messages carry nothing

    def _feed_header(self, token_id: int, special: bool, events: list[ParseEvent]) -> None:
        header = self._header
        assert header is not None
        if token_id == harmony_ids.MESSAGE:
            self._header = None
            self._start_message(self._parse_header(header), events)
        elif token_id == harmony_ids.START:
            self._header = _Header()  # a restarted header replaces the broken one
        elif token_id in _TERMINATOR_NAMES:
            self._header_to_text(events, terminator=token_id)
        elif special:
            if token_id in (harmony_ids.CHANNEL, harmony_ids.CONSTRAIN):
                header.pieces.append((True, harmony_ids.special_token_name(token_id)))
        else:
            header.pieces.append((False, self._encoding.decode([token_id])))
            header.token_count += 1
            if header.token_count > MAX_HEADER_TOKENS:
                self._header_to_text(events)

    def _feed_content(self, token_id: int, special: bool, events: list[ParseEvent]) -> None:
        if not special:
            self._pending_ids.append(token_id)
            self.open_message.token_count += 1  # type: ignore[union-attr]
            return
        if token_id in _TERMINATOR_NAMES:
            self._close(token_id, events)
        elif token_id == harmony_ids.START:
            self._close(None, events)
            self._header = _Header()
        elif token_id == harmony_ids.CHANNEL:
            # a new header inside content: the model skipped `<|end|><|start|>assistant`
            self._close(None, events)
            self._header = _Header(explicit=False)
            self._feed_header(token_id, special, events)
        # <|message|>, <|constrain|>, reserved ids inside content are dropped, never shown

    # --- messages ---

    def _start_message(self, message: ParsedMessage, events: list[ParseEvent]) -> None:
        self.messages.append(message)
        self.open_message = message
        events.append(ParseEvent("start", len(self.messages) - 1, message))

    def _close(self, terminator_id: int | None, events: list[ParseEvent]) -> None:
        self._flush_text(events, final=True)
        message = self.open_message
        assert message is not None
        message.terminator = _TERMINATOR_NAMES.get(terminator_id)  # type: ignore[arg-type, assignment]
        self.open_message = None
        events.append(ParseEvent("end", len(self.messages) - 1, message))

    def _flush_text(self, events: list[ParseEvent], *, final: bool) -> None:
        if self.open_message is None or not self._pending_ids:
            return
        text = self._encoding.decode(self._pending_ids)
        if text.endswith("\ufffd") and not final and len(self._pending_ids) < MAX_PENDING_DECODE_TOKENS:
            return  # the rest of a multi-byte character is still to come
        self._pending_ids = []
        self.open_message.text += text
        events.append(ParseEvent("text", len(self.messages) - 1, self.open_message, text))

    def _header_to_text(self, events: list[ParseEvent], terminator: int | None = None) -> None:
        """A header that never reached `<|message|>` becomes message text, its markup removed.

        With markup in it (`<|channel|>`, `to=`) only what follows the header words is text; a
        header cut off before any such text shows nothing. Without markup it is plain text
        (the model skipped the header), less a leading role name after `<|start|>`."""
        header = self._header
        assert header is not None
        self._header = None
        special_positions = [i for i, (special, _) in enumerate(header.pieces) if special]
        if special_positions:
            text = "".join(text for _, text in header.pieces[special_positions[-1] + 1:])
            text = _LEADING_HEADER_WORDS.sub("", text, count=1)
        else:
            text = header.text(with_specials=False)
            if header.explicit:
                role = next((role for role in ROLES if text.startswith(role)), "")
                text = text[len(role):].lstrip(" ")
                text = _LEADING_HEADER_WORDS.sub("", text, count=1) if "to=" in text.split(" ", 1)[0] else text
        if not text.strip():
            return
        # Stray text after a finished message reads as the answer, whatever came before it.
        self._start_message(ParsedMessage(channel="final", text=text, token_count=header.token_count), events)
        events.append(ParseEvent("text", len(self.messages) - 1, self.messages[-1], text))
        if terminator is not None:
            self._close(terminator, events)

    def _parse_header(self, header: _Header) -> ParsedMessage:
        """`assistant to=functions.f<|channel|>commentary <|constrain|>json` and its broken
        variants -> channel, recipient, content type."""
        text = header.text(with_specials=True)
        content_type: str | None = None
        constrained = _CONSTRAIN_WORD.search(text)
        if constrained:
            content_type = constrained.group(1) or None
            text = _CONSTRAIN_WORD.sub(" ", text)
        role_part, _, channel_part = text.partition("<|channel|>")
        role_words = role_part.split()
        channel_words = channel_part.replace("<|channel|>", " ").split()

        recipient_raw: str | None = None
        role = "assistant"
        channel: str | None = None
        for position, word in enumerate(role_words + channel_words):
            if word.startswith("to="):
                if recipient_raw is None:  # a duplicated `to=` repeats the first
                    recipient_raw = word[3:]
                continue
            if position == 0 and role_words and word in ROLES:
                role = word
            elif word in CHANNELS and channel is None:
                channel = word
            elif content_type is None and word in ("json", "code"):
                content_type = word
        recipient, glued_type = self._normalize_recipient(recipient_raw)
        content_type = content_type or glued_type
        if recipient is not None and channel is None:
            channel = "commentary" if recipient.startswith(FUNCTIONS_PREFIX) else "analysis"
        return ParsedMessage(channel=channel, recipient=recipient, content_type=content_type, role=role)

    def _normalize_recipient(self, raw: str | None) -> tuple[str | None, str | None]:
        """-> (recipient, content type found glued onto it)."""
        if not raw:
            return None, None
        name = raw.strip().strip("\"'")
        glued_type: str | None = None
        if name.endswith("json") and not self._is_known(name) and (
                self._is_known(name[:-4]) or not self.function_names):
            name, glued_type = name[:-4], "json"
        if not name:
            return None, glued_type
        namespace = name.split(".", 1)[0]
        if namespace == "functions" or namespace in self.builtin_namespaces:
            return name, glued_type
        if name == "assistant":
            return None, glued_type
        return FUNCTIONS_PREFIX + name, glued_type  # a bare function name

    def _is_known(self, name: str) -> bool:
        bare = name[len(FUNCTIONS_PREFIX):] if name.startswith(FUNCTIONS_PREFIX) else name
        return bare in self.function_names or name.split(".", 1)[0] in self.builtin_namespaces


def parse_output_tokens(token_ids: Sequence[int], *, function_names: Iterable[str] = (),
                        from_assistant_start: bool = True) -> list[ParsedMessage]:
    """All messages in a finished output. `from_assistant_start`: the ids continue a prompt
    that ended in `<|start|>assistant` (the usual case for generated ids)."""
    parser = HarmonyOutputParser(function_names=function_names)
    if from_assistant_start:
        parser.start_assistant_reply()
    parser.feed(token_ids)
    parser.finish()
    return parser.messages


def parse_output_text(text: str, *, function_names: Iterable[str] = ()) -> list[ParsedMessage]:
    """Parse harmony output given as text (markup spelled out), e.g. for /separate_reasoning.

    Text that starts with a header (`<|start|>`, `<|channel|>`) is read from there; otherwise
    it continues an assistant reply."""
    ids = get_harmony_encoding().encode(text, allowed_special="all")
    starts_with_markup = bool(ids) and ids[0] in (harmony_ids.START, harmony_ids.CHANNEL)
    return parse_output_tokens(ids, function_names=function_names, from_assistant_start=not starts_with_markup)
