"""Grammar-constrained decoding in the engine, on the tiny random-weight checkpoint: every output
parses and validates, greedy and sampled, alone and batched, raw and inside harmony."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from structured_schemas import SCHEMAS

from oss_serve import LLM, SamplingParams
from oss_serve.engine.structured.grammar import GrammarError, check_grammar
from oss_serve.engine.structured.harmony_tracker import HarmonyTracker, Phase
from oss_serve.engine.structured.spec import GrammarSpec, StructuredOutput
from oss_serve.harmony import encoding as harmony_ids
from oss_serve.harmony import render
from oss_serve.harmony.parse import HarmonyOutputParser

MAX_NEW_TOKENS = 96


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def llm(tiny_ckpt: Path) -> LLM:
    return LLM(str(tiny_ckpt), max_total_tokens=16384, page_size=16)


@pytest.fixture(scope="module")
def chat_prompt(harmony_encoding) -> list[int]:
    return render.render_prompt([render.user_message("Describe it as JSON.")], render.PromptSettings())


def raw_params(schema: dict, temperature: float, seed: int = 0) -> SamplingParams:
    spec = StructuredOutput(answer=GrammarSpec("json_schema", json.dumps(schema)), harmony=False)
    return SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=temperature, seed=seed, structured=spec)


def harmony_params(spec: StructuredOutput, temperature: float = 1.0, seed: int = 0) -> SamplingParams:
    return SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=temperature, seed=seed, structured=spec,
                          stop_token_ids=[harmony_ids.RETURN, harmony_ids.CALL], skip_special_tokens=False)


def answer_of(token_ids: list[int]) -> str:
    parser = HarmonyOutputParser()
    parser.feed(token_ids)
    parser.finish()
    finals = [message for message in parser.messages if message.channel == "final"]
    assert len(finals) == 1, parser.messages
    return finals[0].text


def test_every_schema_compiles() -> None:
    for schema in SCHEMAS.values():
        check_grammar(GrammarSpec("json_schema", json.dumps(schema)))


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_raw_outputs_validate_alone_and_in_a_batch(llm: LLM, temperature: float) -> None:
    names = list(SCHEMAS)
    prompts = [[1000 + 37 * i, 2000 + i, 3000] for i in range(len(names))]
    params = [raw_params(SCHEMAS[name], temperature, seed=i) for i, name in enumerate(names)]
    # Unconstrained neighbours share the batch: masks must land on the right rows only.
    free = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5, ignore_eos=True)
    batch = llm.generate(prompts + [[42, 43]], params + [free])
    for name, output in zip(names, batch):
        assert output.finish_reason == "stop", (name, output.text)
        jsonschema.validate(json.loads(output.text), SCHEMAS[name])
    assert len(batch[-1].token_ids) == 8
    alone = llm.generate([prompts[1]], [params[1]])[0]
    assert alone.token_ids == batch[1].token_ids  # a seeded request is the same alone or batched


@pytest.mark.parametrize("budget", [0, 5, None], ids=["no-reasoning", "forced-after-5", "half-budget"])
def test_harmony_answer_validates_after_free_reasoning(llm: LLM, chat_prompt: list[int], harmony_encoding,
                                                       budget: int | None) -> None:
    names = list(SCHEMAS)
    params = [harmony_params(StructuredOutput(answer=GrammarSpec("json_schema", json.dumps(SCHEMAS[name])),
                                              reasoning_budget=budget, calls_allowed=False), seed=i)
              for i, name in enumerate(names)]
    for name, output in zip(names, llm.generate([chat_prompt] * len(names), params)):
        assert output.finish_reason == "stop" and output.token_ids[-1] == harmony_ids.RETURN, name
        jsonschema.validate(json.loads(answer_of(output.token_ids)), SCHEMAS[name])
        reasoning = output.token_ids.index(harmony_ids.MESSAGE)
        if budget is not None:
            assert reasoning <= budget + 3  # the budget, then the forced header


def test_strict_function_arguments_end_in_call(llm: LLM, harmony_encoding) -> None:
    schema = SCHEMAS["flat"]
    # A random-weight model never writes a call header itself: the prompt ends with one.
    prompt = render.render_prompt([render.user_message("weather?")], render.PromptSettings()) + harmony_encoding.encode(
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>", allowed_special="all")
    spec = StructuredOutput(function_args={"get_weather": GrammarSpec("json_schema", json.dumps(schema))})
    for seed in range(3):
        output = llm.generate([prompt], harmony_params(spec, seed=seed))[0]
        assert output.token_ids[-1] == harmony_ids.CALL
        jsonschema.validate(json.loads(harmony_encoding.decode(output.token_ids[:-1])), schema)


@pytest.mark.parametrize("kind, source, check", [
    ("regex", r"[A-Z]{3}-[0-9]{2}", lambda text: len(text) == 6 and text[3] == "-"),
    ("ebnf", 'root ::= "yes" | "no" | "maybe"', lambda text: text in ("yes", "no", "maybe")),
    ("lark", 'start: "(" NUM ("," NUM)~0..2 ")"\nNUM: /[0-9]{1,2}/', lambda text: text[0] == "(" and text[-1] == ")"),
])
def test_regex_and_grammars(llm: LLM, kind: str, source: str, check) -> None:
    spec = StructuredOutput(answer=GrammarSpec(kind, source), harmony=False)  # type: ignore[arg-type]
    for seed in range(3):
        output = llm.generate([[500, 600]], SamplingParams(max_new_tokens=40, temperature=1.0, seed=seed,
                                                           structured=spec))[0]
        assert output.finish_reason == "stop" and check(output.text), output.text


@pytest.mark.parametrize("spec, fragment", [
    (GrammarSpec("json_schema", '{"type": "strin"}'), "type"),
    (GrammarSpec("json_schema", '{"type": "object", "properties": {"a": {"$ref": "#/nope"}}}'), "nope"),
    (GrammarSpec("json_schema", '{"type": '), "not valid JSON"),
    (GrammarSpec("json_schema", '[1, 2]'), "JSON object"),
    (GrammarSpec("regex", "[a-"), "regex"),
])
def test_bad_grammars_name_the_problem(spec: GrammarSpec, fragment: str) -> None:
    with pytest.raises(GrammarError) as raised:
        check_grammar(spec)
    assert fragment in str(raised.value)


def test_harmony_tracker_reads_headers(harmony_encoding) -> None:
    def encode(text: str) -> list[int]:
        return harmony_encoding.encode(text, allowed_special="all")

    tracker = HarmonyTracker.after_prompt(encode("<|start|>user<|message|>hi<|end|><|start|>assistant"),
                                          harmony_encoding.decode)
    assert tracker.phase == Phase.HEADER
    opened = [tracker.feed(token) for token in encode("<|channel|>final <|constrain|>json<|message|>")]
    assert opened[-1] and tracker.header is not None and tracker.header.is_final_answer
    for token in encode('{}<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary '
                        '<|constrain|>json<|message|>'):
        tracker.feed(token)
    assert tracker.header.recipient == "functions.get_weather" and tracker.header.channel == "commentary"
    tracker.feed(harmony_ids.CALL)
    assert tracker.phase == Phase.ENDED
