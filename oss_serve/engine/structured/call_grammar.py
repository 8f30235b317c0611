"""The grammar of a reply that must end in a tool call (tool_choice named or required).

It covers the whole reply after the prompt's `<|start|>assistant`: optionally one analysis
message (the model's reasoning), then the call's header naming one of the allowed recipients,
then its arguments (JSON under the tool's schema, or code for the python tool). The call's
`<|call|>` takes the grammar's end bit, so once the arguments are complete the model can only
end the call, and the call ends the generation.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from oss_serve.engine.structured.spec import GrammarSpec

ANY_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}
# As JSON_COMPILE_OPTIONS in grammar.py, for a schema embedded in a Lark grammar.
_COMPACT_JSON = {"whitespace_flexible": False}


@dataclass(frozen=True)
class CallTarget:
    """One call the reply may end in."""
    recipient: str  # "functions.get_weather", "python", "browser.search", "server_label.tool"
    channel: str  # where harmony puts that call: commentary (functions, MCP) or analysis (built-ins)
    arguments_schema: str | None  # JSON schema text of the arguments; None: code (the python tool)


def loose_arguments_schema(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Arguments of a tool whose schema is not enforced (not strict): still one JSON object, with
    only the keys the schema names where it names any."""
    properties = (parameters or {}).get("properties")
    if not isinstance(properties, Mapping):
        return dict(ANY_OBJECT_SCHEMA)
    return {"type": "object", "properties": {str(key): {} for key in properties}, "additionalProperties": False}


def _lark_string(text: str) -> str:
    return json.dumps(text)


def _arguments_rule(target: CallTarget) -> str:
    if target.arguments_schema is None:
        return '" code" <|message|> CODE'
    schema = json.loads(target.arguments_schema)
    if isinstance(schema, dict):
        schema = {**schema, "x-guidance": {**_COMPACT_JSON, **schema.get("x-guidance", {})}}
    return f'" " <|constrain|> "json" <|message|> %json {json.dumps(schema)}'


def forced_call_grammar(targets: Iterable[CallTarget], *, reasoning: bool) -> GrammarSpec:
    """`reasoning`: whether an analysis message may come before the call."""
    targets = list(targets)
    if not targets:
        raise ValueError("a forced call needs at least one target")
    lines = ["start: reasoning call" if reasoning else "start: call",
             "reasoning: (<|channel|> \"analysis\" <|message|> TEXT <|end|> <|start|> \"assistant\")?",
             "TEXT: /(.|\\n)*/",
             "CODE: /(.|\\n)+/",
             "call: " + " | ".join(f"call_{index}" for index in range(len(targets)))]
    lines.extend(f"call_{index}: <|channel|> {_lark_string(f'{target.channel} to={target.recipient}')} "
                 f"{_arguments_rule(target)}" for index, target in enumerate(targets))
    return GrammarSpec("lark", "\n".join(lines))
