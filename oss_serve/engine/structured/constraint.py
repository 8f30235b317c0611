"""One request's constraint: which tokens its next step may take, and how it advances.

In harmony mode the grammar is live only inside the content it governs (the final answer, or
a strict function's arguments); elsewhere the model writes freely, except that it may not end
the turn without the answer it owes. Once the reasoning budget is spent, the engine writes the
final header itself, one forced token per step. When a grammar is complete its end bit, which
the library puts on `<|return|>`, is moved to the token that ends that content: `<|return|>`
after the answer, `<|call|>` after call arguments, the model's EOS in raw mode.

A forced call's grammar covers the whole reply instead (reasoning, then the call) and stays live
from the first token to the call's end; once the reasoning budget is spent the engine closes
the reasoning message itself, which leaves the grammar only the call.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from llguidance import LLMatcher, LLTokenizer

from oss_serve.engine.structured.grammar import new_matcher
from oss_serve.engine.structured.harmony_tracker import HarmonyTracker, MessageHeader, Phase
from oss_serve.engine.structured.spec import StructuredOutput
from oss_serve.harmony import encoding as harmony_ids

FUNCTIONS_PREFIX = "functions."
# Real headers are a handful of tokens. One running longer is noise (a random-weight model's),
# and the API's parser stops reading it as a header at 48 tokens: close it well before that.
MAX_FREE_HEADER_TOKENS = 24


@dataclass(frozen=True)
class GrammarStep:
    matcher: LLMatcher
    terminator: int  # the token that takes the grammar's end bit
    # Tokens taken since the last mask, fed to the matcher by the mask worker (off the critical path).
    catch_up: tuple[int, ...] = ()


@dataclass(frozen=True)
class ForcedStep:
    token: int


@dataclass(frozen=True)
class BannedStep:
    tokens: tuple[int, ...]


StepMask = GrammarStep | ForcedStep | BannedStep | None


class RequestConstraint:
    def __init__(self, spec: StructuredOutput, prompt_ids: Sequence[int], tokenizer: LLTokenizer,
                 max_new_tokens: int, eos_token_ids: Sequence[int]) -> None:
        """Compiles every grammar now, so a bad one fails the request before it is queued."""
        self.spec = spec
        self._tokenizer = tokenizer
        self._answer = new_matcher(tokenizer, spec.answer) if spec.answer is not None else None
        self._function_args = {name: new_matcher(tokenizer, grammar) for name, grammar in spec.function_args.items()}
        self._active: GrammarStep | None = None
        self._unconsumed: list[int] = []  # taken by the request, not yet fed to the active matcher
        self._forced: deque[int] = deque()
        self._num_output = 0
        self._answer_started = False
        self._reasoning_budget = (spec.reasoning_budget if spec.reasoning_budget is not None
                                  else max_new_tokens // 2)
        ends_without_answer = {harmony_ids.RETURN, *eos_token_ids} - {harmony_ids.CALL}
        if not spec.calls_allowed:
            ends_without_answer.add(harmony_ids.CALL)
        self._ends_without_answer = tuple(sorted(ends_without_answer))
        self._tracker: HarmonyTracker | None = None
        self._whole_reply = spec.harmony and spec.forced_call is not None
        if not spec.harmony:
            if self._answer is not None:
                self._active = GrammarStep(self._answer, eos_token_ids[0] if eos_token_ids else harmony_ids.RETURN)
            return
        self._tracker = HarmonyTracker.after_prompt(prompt_ids, tokenizer.decode_str)
        if spec.forced_call is not None:
            self._active = GrammarStep(new_matcher(tokenizer, spec.forced_call), harmony_ids.CALL)
        elif self._tracker.phase == Phase.CONTENT and self._tracker.header is not None:
            self._open(self._tracker.header)  # the prompt prefilled a whole header

    def next_step_mask(self) -> StepMask:
        """What constrains the next token (None: nothing)."""
        if self._whole_reply and self._reasoning_over_budget():
            self._forced.extend(self._tokenizer.tokenize_str("<|end|><|start|>assistant", parse_special=True))
        if self._forced:
            return ForcedStep(self._forced[0])
        if self._active is not None:
            step = GrammarStep(self._active.matcher, self._active.terminator, tuple(self._unconsumed))
            self._unconsumed.clear()
            return step
        if self._tracker is None or self._answer is None or self._answer_started:
            return None
        if self._tracker.phase == Phase.ENDED:
            return None
        if self._num_output >= self._reasoning_budget or self._tracker.header_length > MAX_FREE_HEADER_TOKENS:
            self._forced.extend(self._final_header_ids())
            return ForcedStep(self._forced[0])
        return BannedStep(self._ends_without_answer)

    def advance(self, token: int) -> None:
        """Account for the token the request just took."""
        self._num_output += 1
        if self._forced and self._forced[0] == token:
            self._forced.popleft()
        if self._active is not None and token != self._active.terminator:
            self._unconsumed.append(token)
        if self._tracker is None:
            return
        if self._whole_reply:
            self._tracker.feed(token)
            return
        if self._tracker.feed(token) and self._tracker.header is not None:
            self._open(self._tracker.header)
        elif self._tracker.phase != Phase.CONTENT:
            self._active = None

    def _reasoning_over_budget(self) -> bool:
        """In a forced call's reply: the reasoning message is open and has had its tokens."""
        assert self._tracker is not None
        header = self._tracker.header
        return (not self._forced and self._num_output >= self._reasoning_budget
                and self._tracker.phase == Phase.CONTENT and header is not None and header.is_reasoning)

    def _open(self, header: MessageHeader) -> None:
        self._active = None
        self._unconsumed.clear()
        if header.is_final_answer and self._answer is not None:
            self._answer_started = True
            self._active = GrammarStep(self._answer.deep_copy(), harmony_ids.RETURN)
            return
        recipient = header.recipient or ""
        name = recipient[len(FUNCTIONS_PREFIX):] if recipient.startswith(FUNCTIONS_PREFIX) else None
        if name in self._function_args:
            self._active = GrammarStep(self._function_args[name].deep_copy(), harmony_ids.CALL)

    def _final_header_ids(self) -> list[int]:
        """The tokens that take the reply from where it stands to the start of the final answer."""
        assert self._tracker is not None
        phase = self._tracker.phase
        if phase == Phase.HEADER:
            if self._tracker.header_has_channel:
                return [harmony_ids.MESSAGE]  # finish this header; its content gets closed next
            return self._tokenizer.tokenize_str("<|channel|>final<|message|>", parse_special=True)
        prefix = "<|end|>" if phase == Phase.CONTENT else ""
        return self._tokenizer.tokenize_str(prefix + "<|start|>assistant<|channel|>final<|message|>",
                                            parse_special=True)
