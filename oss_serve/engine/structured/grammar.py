"""The grammar library (llguidance) behind one small interface: compile a GrammarSpec, check it
for a 400, and build the tokenizer it needs.

Why llguidance (measured against xgrammar 0.2.8 on the o200k_harmony vocabulary, 64 matchers):
both fill a batch of masks in about a millisecond, but llguidance's batch fill drops the GIL
and runs on its own thread pool (so it overlaps the forward from a Python thread), it reads
`tokenizer.json` directly (no transformers at run time), its end-of-grammar token is ours to
choose (we make it `<|return|>`, so "the answer is complete" is just a mask bit), and it takes
JSON schema, regex, Lark and GBNF/EBNF with error messages a 400 can quote.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import llguidance
from llguidance import LLMatcher, LLTokenizer
from llguidance._grammar_from import grammar_from

from oss_serve.engine.structured.spec import GrammarSpec
from oss_serve.harmony import encoding as harmony_ids

# Compact JSON: with flexible whitespace a model can pad forever before closing a brace, and
# every space is a token spent. A schema can still ask for whitespace through `x-guidance`.
JSON_COMPILE_OPTIONS: llguidance.JsonCompileOptions = {"whitespace_flexible": False}
JSON_OBJECT_SCHEMA = '{"type": "object"}'


class GrammarError(ValueError):
    """A grammar that is malformed or that the library cannot compile; the message says why."""


@functools.lru_cache(maxsize=1024)
def grammar_definition(spec: GrammarSpec) -> str:
    """llguidance's grammar definition for `spec` (not yet checked)."""
    if spec.kind == "json_schema":
        return LLMatcher.grammar_from_json_schema(spec.source, defaults=JSON_COMPILE_OPTIONS)
    if spec.kind == "regex":
        return LLMatcher.grammar_from_regex(spec.source)
    if spec.kind == "lark":
        return LLMatcher.grammar_from_lark(spec.source)
    return grammar_from("ebnf", spec.source)


def check_grammar(spec: GrammarSpec) -> None:
    """Raise GrammarError naming the problem: JSON that does not parse, a schema that breaks the
    JSON Schema meta-schema, or anything the library cannot compile."""
    import jsonschema  # only the API process checks schemas; the engine needs just llguidance

    if spec.kind == "json_schema":
        try:
            schema = json.loads(spec.source)
        except json.JSONDecodeError as error:
            raise GrammarError(f"the schema is not valid JSON: {error}") from None
        if not isinstance(schema, (dict, bool)):
            raise GrammarError(f"the schema must be a JSON object, not {type(schema).__name__}")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as error:
            where = "/".join(str(part) for part in error.path) or "(root)"
            raise GrammarError(f"the schema is invalid at {where}: {error.message}") from None
    try:
        problem = LLMatcher.validate_grammar(grammar_definition(spec))
    except ValueError as error:
        problem = str(error)
    if problem:
        raise GrammarError(f"the {spec.kind.replace('_', ' ')} cannot be compiled: {problem.strip()}")


@functools.lru_cache(maxsize=4)
def load_tokenizer(tokenizer_json: Path, vocab_size: int) -> LLTokenizer:
    """The checkpoint's tokenizer for mask computation (about a second to build; cached).
    Its end-of-grammar token is `<|return|>`; constraints move that bit where they need another."""
    return LLTokenizer(tokenizer_json.read_text(encoding="utf-8"), n_vocab=vocab_size,
                       eos_token=harmony_ids.RETURN)


def new_matcher(tokenizer: LLTokenizer, spec: GrammarSpec) -> LLMatcher:
    matcher = LLMatcher(tokenizer, grammar_definition(spec))
    if matcher.is_error():
        raise GrammarError(f"the {spec.kind.replace('_', ' ')} cannot be compiled: {matcher.get_error()}")
    return matcher
