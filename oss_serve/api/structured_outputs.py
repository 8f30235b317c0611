"""Request fields -> StructuredOutput for the engine, with a 400 naming whatever is wrong.

- Chat `response_format` / Responses `text.format` (`json_schema`, `json_object`) constrain the
  final answer; the schema is also shown to the model in the developer message under
  `# Response Formats`, as harmony expects, so it knows what the fields mean.
- Function tools with `strict: true` constrain their call arguments to `parameters`.
- A forced call (tool_choice named or required) constrains the whole reply: reasoning, then a
  call to one of the allowed tools, its arguments held to the strict schema or else to a JSON
  object with the keys the tool names, then `<|call|>`, which ends the generation.
- The model reasons freely first. `max_reasoning_tokens` (an extra body field) caps that: once
  the reply has used that many tokens without starting the answer, the engine writes the final
  header itself; 0 skips reasoning. Left out, it is half of the output budget, so a long
  chain of thought can never crowd out the answer.
- /generate's `sampling_params.json_schema` / `regex` / `ebnf` (SGLang's names) constrain the
  raw output from its first token.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from oss_serve.api.errors import APIError
from oss_serve.engine.structured.call_grammar import CallTarget, forced_call_grammar, loose_arguments_schema
from oss_serve.engine.structured.grammar import JSON_OBJECT_SCHEMA, GrammarError, check_grammar
from oss_serve.engine.structured.spec import GrammarSpec, StructuredOutput

GENERATE_GRAMMAR_KINDS = {"json_schema": "json_schema", "regex": "regex", "ebnf": "ebnf"}
EMPTY_ARGUMENTS_SCHEMA = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class AnswerFormat:
    grammar: GrammarSpec
    instructions: str  # the `# Response Formats` section for the developer message


@dataclass(frozen=True)
class StrictFunction:
    name: str
    parameters: dict[str, Any] | None
    param: str  # where the request spelled its parameters, for errors


def _checked(grammar: GrammarSpec, param: str) -> GrammarSpec:
    try:
        check_grammar(grammar)
    except GrammarError as error:
        raise APIError(f"{param}: {error}", param=param, code="invalid_schema") from None
    return grammar


def _schema_text(schema: Any, param: str) -> str:
    if isinstance(schema, str):
        return schema
    if not isinstance(schema, (dict, bool)):
        raise APIError(f"{param} must be a JSON schema object.", param=param, code="invalid_schema")
    return json.dumps(schema)


def answer_format(fmt: Mapping[str, Any] | None, *, param: str, nested: bool) -> AnswerFormat | None:
    """`fmt` is chat's response_format (`nested`: the schema sits under `json_schema`) or the
    Responses API's text.format (name and schema at the top level)."""
    if not fmt or fmt.get("type", "text") == "text":
        return None
    if fmt["type"] == "json_object":
        grammar = _checked(GrammarSpec("json_schema", JSON_OBJECT_SCHEMA), param)
        return AnswerFormat(grammar, "# Response Formats\n\n## json_object\n\n// Reply with one JSON object.\n"
                                     + JSON_OBJECT_SCHEMA)
    if fmt["type"] != "json_schema":
        raise APIError(f"{param}.type '{fmt['type']}' is not supported here (text, json_object, json_schema).",
                       param=f"{param}.type", code="unsupported_response_format")
    body = fmt.get("json_schema") if nested else fmt
    body_param = f"{param}.json_schema" if nested else param
    if not isinstance(body, Mapping) or body.get("schema") is None:
        raise APIError(f"{body_param}.schema is required for type json_schema.", param=f"{body_param}.schema",
                       code="invalid_schema")
    schema_text = _schema_text(body["schema"], f"{body_param}.schema")
    grammar = _checked(GrammarSpec("json_schema", schema_text), f"{body_param}.schema")
    name = body.get("name") or "response"
    description = f"// {body['description']}\n" if body.get("description") else ""
    return AnswerFormat(grammar, f"# Response Formats\n\n## {name}\n\n{description}{schema_text}")


def with_format_instructions(instructions: str | None, answer: AnswerFormat | None) -> str | None:
    if answer is None:
        return instructions
    return f"{instructions}\n\n{answer.instructions}" if instructions else answer.instructions


def strict_function_grammars(functions: Iterable[StrictFunction]) -> dict[str, GrammarSpec]:
    return {function.name: _checked(GrammarSpec("json_schema", _schema_text(
        function.parameters or EMPTY_ARGUMENTS_SCHEMA, function.param)), function.param)
        for function in functions}


def function_call_target(name: str, parameters: Any, strict: Mapping[str, GrammarSpec]) -> CallTarget:
    """A call to `functions.name`: its arguments under the strict schema where there is one."""
    schema = strict[name].source if name in strict else json.dumps(
        loose_arguments_schema(parameters if isinstance(parameters, Mapping) else None))
    return CallTarget(f"functions.{name}", "commentary", schema)


def forced_call_output(targets: list[CallTarget], *, reasoning_budget: int | None,
                       param: str = "tool_choice") -> StructuredOutput:
    """The reply must be one call to one of `targets` (after reasoning, unless the budget is 0)."""
    grammar = _checked(forced_call_grammar(targets, reasoning=reasoning_budget != 0), param)
    return StructuredOutput(forced_call=grammar, reasoning_budget=reasoning_budget)


def max_reasoning_tokens(extra: Mapping[str, Any] | None) -> int | None:
    value = (extra or {}).get("max_reasoning_tokens")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise APIError(f"max_reasoning_tokens must be an integer >= 0, got {value!r}.", param="max_reasoning_tokens")
    return value


def harmony_structured_output(answer: AnswerFormat | None, function_args: dict[str, GrammarSpec], *,
                              reasoning_budget: int | None, calls_allowed: bool) -> StructuredOutput | None:
    if answer is None and not function_args:
        return None
    return StructuredOutput(answer=answer.grammar if answer else None, function_args=function_args,
                            reasoning_budget=reasoning_budget, calls_allowed=calls_allowed)


def generate_structured_output(sampling_params: Mapping[str, Any]) -> StructuredOutput | None:
    """SGLang's `json_schema` / `regex` / `ebnf` sampling params: at most one, on the raw output."""
    given = [key for key in GENERATE_GRAMMAR_KINDS if sampling_params.get(key) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise APIError(f"sampling_params may set only one of json_schema, regex and ebnf (got {', '.join(given)}).",
                       param=f"sampling_params.{given[1]}")
    key = given[0]
    param = f"sampling_params.{key}"
    value = sampling_params[key]
    if key == "json_schema":
        source = _schema_text(value, param)
    elif isinstance(value, str):
        source = value
    else:
        raise APIError(f"{param} must be a string.", param=param)
    grammar = _checked(GrammarSpec(GENERATE_GRAMMAR_KINDS[key], source), param)  # type: ignore[arg-type]
    return StructuredOutput(answer=grammar, harmony=False)
