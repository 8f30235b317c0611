"""The tolerant harmony output parser, on hand-written model outputs (REFERENCE section 3)."""
from __future__ import annotations

import random

import pytest

from oss_serve.harmony.parse import HarmonyOutputParser, ParsedMessage, parse_output_text, parse_output_tokens

CALL_ARGS = '{"location": "Paris"}'


def _summary(messages: list[ParsedMessage]) -> list[tuple]:
    return [(m.channel, m.recipient, m.content_type, m.text) for m in messages]


def _reasoning_content_calls(messages: list[ParsedMessage]) -> tuple[str, str, list[tuple[str, str]]]:
    reasoning = "".join(m.text for m in messages if m.is_reasoning)
    content = "".join(m.text for m in messages if not m.is_reasoning and not m.is_function_call)
    calls = [(m.function_name, m.text) for m in messages if m.is_function_call]
    return reasoning, content, calls


def test_well_formed_reasoning_then_answer(harmony_encoding) -> None:
    messages = parse_output_text("<|channel|>analysis<|message|>Think.<|end|>"
                                 "<|start|>assistant<|channel|>final<|message|>Hello!<|return|>")
    assert _summary(messages) == [("analysis", None, None, "Think."), ("final", None, None, "Hello!")]
    assert [m.terminator for m in messages] == ["end", "return"]


@pytest.mark.parametrize("output, expected", [
    # text after <|end|> without a new <|start|>
    ("<|channel|>analysis<|message|>Think.<|end|>The answer is 4.<|return|>", ("Think.", "The answer is 4.", [])),
    ("<|channel|>analysis<|message|>Think.<|end|><|channel|>final<|message|>Four.<|return|>", ("Think.", "Four.", [])),
    # duplicated to=
    ("<|channel|>commentary to=functions.get_weather to=functions.get_weather <|constrain|>json<|message|>"
     + CALL_ARGS + "<|call|>", ("", "", [("get_weather", CALL_ARGS)])),
    # a call ending in <|return|> instead of <|call|>
    ("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>" + CALL_ARGS + "<|return|>",
     ("", "", [("get_weather", CALL_ARGS)])),
    # missing <|constrain|>json
    ("<|channel|>commentary to=functions.get_weather<|message|>" + CALL_ARGS + "<|call|>",
     ("", "", [("get_weather", CALL_ARGS)])),
    # bare function name without functions.
    ("<|channel|>commentary to=get_weather <|constrain|>json<|message|>" + CALL_ARGS + "<|call|>",
     ("", "", [("get_weather", CALL_ARGS)])),
    # json glued onto the name
    ("<|channel|>commentary to=functions.get_weatherjson<|message|>" + CALL_ARGS + "<|call|>",
     ("", "", [("get_weather", CALL_ARGS)])),
    # a function call on analysis instead of commentary
    ("<|channel|>analysis<|message|>Use the tool.<|end|><|start|>assistant<|channel|>analysis "
     "to=functions.get_weather <|constrain|>json<|message|>" + CALL_ARGS + "<|call|>",
     ("Use the tool.", "", [("get_weather", CALL_ARGS)])),
    # recipient in the role part
    (" to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>" + CALL_ARGS + "<|call|>",
     ("", "", [("get_weather", CALL_ARGS)])),
    # structured output: final + <|constrain|>json and no recipient
    ("<|channel|>final <|constrain|>json<|message|>{\"a\": 1}<|return|>", ("", "{\"a\": 1}", [])),
    # a new header inside content without <|end|><|start|>
    ("<|channel|>analysis<|message|>Hmm<|channel|>final<|message|>Done", ("Hmm", "Done", [])),
    # no header at all
    ("Plain text.", ("", "Plain text.", [])),
    # a cut-off output (max_tokens) keeps what was there
    ("<|channel|>analysis<|message|>Thinking about", ("Thinking about", "", [])),
    # stray specials inside content are dropped, never shown
    ("<|channel|>final<|message|>a<|message|>b<|constrain|>c<|return|>", ("", "abc", [])),
])
def test_malformed_variants(harmony_encoding, output: str, expected: tuple) -> None:
    messages = parse_output_text(output, function_names=["get_weather"])
    assert _reasoning_content_calls(messages) == expected
    for message in messages:
        assert "<|" not in message.text


def test_preamble_on_commentary_is_content(harmony_encoding) -> None:
    messages = parse_output_text("<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant"
                                 "<|channel|>commentary to=functions.get_weather "
                                 "<|constrain|>json<|message|>{}<|call|>",
                                 function_names=["get_weather"])
    assert _reasoning_content_calls(messages) == ("", "Checking.", [("get_weather", "{}")])


def test_builtin_tool_call_is_reasoning(harmony_encoding) -> None:
    messages = parse_output_text("<|channel|>analysis to=browser.search code<|message|>{\"query\": \"x\"}<|call|>")
    assert messages[0].recipient == "browser.search" and messages[0].is_reasoning
    assert not messages[0].is_function_call


def test_token_by_token_equals_whole(harmony_encoding) -> None:
    text = ("<|channel|>analysis<|message|>Think 🦜 in ǅ𝔘𝔫𝔦𝔠𝔬𝔡𝔢.<|end|><|start|>assistant<|channel|>commentary "
            "to=functions.get_weather <|constrain|>json<|message|>" + CALL_ARGS + "<|call|>")
    ids = harmony_encoding.encode(text, allowed_special="all")
    parser = HarmonyOutputParser(function_names=["get_weather"])
    parser.start_assistant_reply()
    streamed: dict[int, str] = {}
    for token_id in ids:
        for event in parser.feed([token_id]):
            if event.kind == "text":
                assert "\ufffd" not in event.text  # never half a character
                streamed[event.index] = streamed.get(event.index, "") + event.text
    parser.finish()
    whole = parse_output_tokens(ids, function_names=["get_weather"])
    assert _summary(parser.messages) == _summary(whole)
    assert streamed == {i: m.text for i, m in enumerate(whole)}
    assert whole[0].text == "Think 🦜 in ǅ𝔘𝔫𝔦𝔠𝔬𝔡𝔢."


def test_prefilled_call_header_opens_a_call(harmony_encoding) -> None:
    prefill = harmony_encoding.encode(
        "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>", allowed_special="all")
    parser = HarmonyOutputParser(function_names=["get_weather"])
    events = parser.start_assistant_reply(prefill)
    assert [e.kind for e in events] == ["start"] and events[0].message.function_name == "get_weather"
    parser.feed(harmony_encoding.encode(CALL_ARGS) + [200012])
    assert parser.messages[0].text == CALL_ARGS and parser.messages[0].terminator == "call"


def test_token_counts_exclude_markup(harmony_encoding) -> None:
    ids = harmony_encoding.encode("<|channel|>analysis<|message|>one two<|end|>", allowed_special="all")
    messages = parse_output_tokens(ids)
    assert messages[0].token_count == len(harmony_encoding.encode("one two"))


def test_random_token_soup_never_raises_or_leaks_markup(harmony_encoding) -> None:
    specials = [199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012, 200100]
    words = harmony_encoding.encode(" analysis final commentary to=functions.f json assistant hello 🦜")
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.choice(specials) if rng.random() < 0.3 else rng.choice(words) for _ in range(rng.randint(0, 40))]
        for message in parse_output_tokens(ids, function_names=["f"]):
            assert "<|" not in message.text


@pytest.mark.parametrize("output, content", [
    # tool_choice "required" prefill, cut off before <|message|>: header words are not content
    ("<|channel|>commentary to=functions.get_wea", ""),
    ("<|channel|>commentary to=functions.bogus_name and then some words", "and then some words"),
    # the model skipped the header entirely after <|start|>assistant
    ("Hello world", "Hello world"),
])
def test_cut_off_headers_never_show_header_words(harmony_encoding, output: str, content: str) -> None:
    messages = parse_output_text(output, function_names=["get_weather"])
    assert _reasoning_content_calls(messages) == ("", content, [])
