"""What a request asks its output to look like. Plain data: it travels to the engine process
inside SamplingParams."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GrammarKind = Literal["json_schema", "regex", "ebnf", "lark"]


@dataclass(frozen=True)
class GrammarSpec:
    kind: GrammarKind
    source: str  # the schema as JSON text, the regex, or the grammar text


@dataclass(frozen=True)
class StructuredOutput:
    """The grammars of one request, and where they apply.

    harmony=False: `answer` constrains the whole output from its first token (SGLang's
    /generate semantics; the prompt is whatever the caller sent).
    harmony=True: the output is harmony messages. `answer` constrains the content of the
    `final` message and `function_args[name]` the arguments of a call to `functions.name`;
    everything else (analysis, preambles, other calls) is free. After `reasoning_budget` output
    tokens without the answer having started, the engine writes the final header itself.
    `forced_call` (tool_choice named or required) instead constrains the whole reply: reasoning,
    then a call (see call_grammar.py); once the budget is spent the engine closes the reasoning.
    """
    answer: GrammarSpec | None = None
    function_args: dict[str, GrammarSpec] = field(default_factory=dict)
    harmony: bool = True
    reasoning_budget: int | None = None  # None: half of the request's output budget
    # harmony: whether the turn may end in a tool call (`<|call|>`) instead of the answer.
    calls_allowed: bool = True
    forced_call: GrammarSpec | None = None  # harmony: the reply's grammar; the other grammars then do not apply
