"""The built o200k_harmony tokenizer.json and `Tokenizer` against openai-harmony."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from oss_serve.env import vocab_dir as find_vocab_dir
from oss_serve.harmony import encoding as harmony_ids
from oss_serve.harmony.encoding import special_token_name, stop_token_ids_for_assistant
from oss_serve.model.tokenizer import Tokenizer
from oss_serve.testing.tokenizer_json import derive_merges

VARIED_STRINGS = [
    "Hello, world!",
    "hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\r\nwindows\r\n",
    "\n\n\n",
    "     ",
    "word    \n   indented",
    "I'm sure you'll see they're here; we've done it, he'd say. IT'S DONE, WE'LL SEE",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000 0x1F 1e-9",
    "日本語のテキストと中文文本,한국어 텍스트.",
    "Emoji: 😀🚀👍🏽 👨‍👩‍👧‍👦 🇯🇵",
    "Ünïcödé àccents: café naïve façade Straße",
    "Кириллица и ελληνικά και العربية",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    'print("a" + \'b\');\n\tif (x != y) { return z[0]; }',
    "<html><body class=\"main\">&amp; &lt;</body></html>",
    "https://example.com/path?q=1&r=two#frag",
    "Mixed CASE camelCase snake_case SCREAMING_CASE PascalCase",
    "combining e\u0301 and a\u0300 marks",
    "zero\u200bwidth\u00a0nbsp\u3000ideographic space",
    "<|start|>user<|message|>hi<|end|>",
    "text <|endoftext|> more <|reserved_200100|> and <|call|>",
    "<|start|<|message|><|unknown|>",
    "$$\\frac{a}{b} = \\sum_{i=0}^{n} x_i$$",
    "",
    "a",
    "😀",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_ckpt: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(tiny_ckpt)


def test_special_ids_match_the_library(harmony_encoding) -> None:
    named = {
        harmony_ids.STARTOFTEXT: "<|startoftext|>",
        harmony_ids.ENDOFTEXT: "<|endoftext|>",
        harmony_ids.RETURN: "<|return|>",
        harmony_ids.CONSTRAIN: "<|constrain|>",
        harmony_ids.CHANNEL: "<|channel|>",
        harmony_ids.START: "<|start|>",
        harmony_ids.END: "<|end|>",
        harmony_ids.MESSAGE: "<|message|>",
        harmony_ids.CALL: "<|call|>",
    }
    for token_id, text in named.items():
        assert harmony_encoding.decode([token_id]) == text
        assert harmony_encoding.encode(text, allowed_special="all") == [token_id]
    for token_id in range(harmony_ids.FIRST_SPECIAL_ID, harmony_ids.LAST_SPECIAL_ID + 1):
        assert harmony_encoding.is_special_token(token_id)
        assert special_token_name(token_id) == harmony_encoding.decode([token_id])
    assert stop_token_ids_for_assistant() == [harmony_ids.RETURN, harmony_ids.CALL]
    assert harmony_encoding.encode("assistant") == [harmony_ids.ASSISTANT]


def test_find_vocab_dir_prefers_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vocab_file: Path) -> None:
    (tmp_path / "o200k_base.tiktoken").write_bytes(b"")
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path))
    assert find_vocab_dir() == tmp_path
    # An env folder without the file does not hide the shared one.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(empty))
    assert find_vocab_dir() != empty


def test_derive_merges_follows_rank_order() -> None:
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5, b"cab": 6}
    # "abc": BPE below rank 5 merges "ab" (3) before "bc" (4).
    # "cab": below rank 6, "ab" merges first, leaving ("c", "ab").
    assert derive_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"c", b"ab")]


@pytest.mark.parametrize("text", VARIED_STRINGS)
def test_encode_matches_harmony(tokenizer: Tokenizer, harmony_encoding, text: str) -> None:
    plain = harmony_encoding.encode(text, allowed_special=set(), disallowed_special=())
    assert tokenizer.encode(text) == plain
    assert tokenizer.encode(text, allow_special=True) == harmony_encoding.encode(text, allowed_special="all")
    assert tokenizer.decode(plain) == text


def test_random_text_matches_harmony(tokenizer: Tokenizer, harmony_encoding) -> None:
    rng = random.Random(1234)
    alphabet = (list("abcXYZ019 \n\t\r'\".,:;!?-_()[]{}<>|/\\#$%&*+=~`")
                + list("éßçø中文日本한국😀🚀🏽абвαβ∑√\u0301\u200b\u00a0"))
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert tokenizer.encode(text) == harmony_encoding.encode(text, allowed_special=set(), disallowed_special=())


def test_special_token_text_is_plain_unless_allowed(tokenizer: Tokenizer) -> None:
    text = "<|start|>assistant<|channel|>final<|message|>hi<|return|>"
    plain = tokenizer.encode(text)
    assert all(token_id < harmony_ids.FIRST_SPECIAL_ID for token_id in plain)
    assert tokenizer.decode(plain) == text
    with_specials = tokenizer.encode(text, allow_special=True)
    assert with_specials[0] == harmony_ids.START
    assert with_specials[-1] == harmony_ids.RETURN
    assert harmony_ids.CHANNEL in with_specials and harmony_ids.MESSAGE in with_specials
    assert tokenizer.decode(with_specials, skip_special_tokens=True) == "assistantfinalhi"


def test_rendered_conversation_round_trips(tokenizer: Tokenizer, harmony_encoding) -> None:
    from openai_harmony import (
        Conversation,
        DeveloperContent,
        Message,
        Role,
        SystemContent,
        ToolDescription,
    )

    weather_tool = ToolDescription.new(
        "get_weather",
        "Gets the weather",
        parameters={"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    )
    conversation = Conversation.from_messages(
        [
            Message.from_role_and_content(Role.SYSTEM, SystemContent.new().with_conversation_start_date("2025-06-28")),
            Message.from_role_and_content(
                Role.DEVELOPER,
                DeveloperContent.new().with_instructions("Answer briefly.").with_function_tools([weather_tool]),
            ),
            Message.from_role_and_content(Role.USER, "What's the weather in Tokyo? 東京 🌧"),
            Message.from_role_and_content(Role.ASSISTANT, "Need to call the tool.").with_channel("analysis"),
            Message.from_role_and_content(Role.ASSISTANT, '{"location": "Tokyo"}')
            .with_channel("commentary")
            .with_recipient("functions.get_weather")
            .with_content_type("<|constrain|>json"),
        ]
    )
    rendered = harmony_encoding.render_conversation_for_completion(conversation, Role.ASSISTANT)
    text = tokenizer.decode(rendered)
    assert tokenizer.encode(text, allow_special=True) == rendered


def test_vocabulary_and_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 201088
    assert tokenizer.eos_token_ids == [harmony_ids.RETURN, harmony_ids.ENDOFTEXT, harmony_ids.CALL]
    assert tokenizer.token_to_id("<|start|>") == harmony_ids.START
    assert tokenizer.id_to_token(harmony_ids.LAST_SPECIAL_ID) == "<|reserved_201087|>"
    hello_ids = tokenizer.encode(" hello")
    assert len(hello_ids) == 1
    assert tokenizer.id_to_token(hello_ids[0]) == "Ġhello"
    assert tokenizer.token_to_id("Ġhello") == hello_ids[0]


def test_eos_falls_back_to_config(tokenizer_json_path: Path, tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes(tokenizer_json_path.read_bytes())
    (tmp_path / "config.json").write_text('{"eos_token_id": 200002}')
    assert Tokenizer.from_pretrained(tmp_path).eos_token_ids == [200002]


def test_token_bytes_rebuild_the_text_even_inside_characters(tokenizer: Tokenizer) -> None:
    """Logprobs report each token's bytes; a token holding part of a UTF-8 character gives that part."""
    text = "naïve 日本語 🙂 𓀀 ꙮ <|start|>\n\t"
    ids = tokenizer.encode(text, allow_special=True)
    pieces = [tokenizer.token_bytes(token_id) for token_id in ids]
    assert b"".join(pieces).decode() == text
    assert any(not _is_utf8(piece) for piece in pieces)  # 𓀀 and ꙮ take a token per byte


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True
