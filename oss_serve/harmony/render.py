"""Harmony prompt rendering: a conversation plus its settings -> prompt token ids.

Shared by the chat completions and Responses front ends. Callers turn their own request shapes
into openai-harmony `Message`s (helpers below) and a `PromptSettings`; this module adds the
system and developer messages, drops the chain of thought of finished turns and renders.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    SystemContent,
    TextContent,
    ToolDescription,
    ToolNamespaceConfig,
)

from oss_serve.harmony.encoding import MESSAGE, get_harmony_encoding

ReasoningLevel = Literal["low", "medium", "high"]
FUNCTIONS_NAMESPACE = "functions"
# History texts longer than this are tokenized by `encode_text` (see render_prompt); below it, harmony's
# encoder costs at most about a millisecond.
LONG_TEXT_CHARS = 2048
# Instructions and tool descriptions stay with harmony's encoder: a run without a space or digit longer
# than this (about a second of its time at most) is refused instead.
MAX_UNBROKEN_RUN = 16384
_UNBROKEN_RUN = re.compile(rf"[^\s\d]{{{MAX_UNBROKEN_RUN + 1},}}|\s{{{MAX_UNBROKEN_RUN + 1},}}")


class UnrenderableText(ValueError):
    """Text openai-harmony cannot render in reasonable time (or at all): a 400 for the request."""


ANALYSIS, COMMENTARY, FINAL = "analysis", "commentary", "final"


@dataclass(frozen=True)
class FunctionTool:
    """A developer-defined function the model may call (`functions.NAME`)."""
    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None  # JSON schema of the arguments object


@dataclass
class PromptSettings:
    """Everything about a prompt that is not the conversation itself."""
    instructions: str | None = None  # goes to the developer message's `# Instructions`
    reasoning_effort: ReasoningLevel = "medium"
    function_tools: list[FunctionTool] = field(default_factory=list)
    # Built-in tools (browser, python, MCP servers), shown in the system message.
    tool_namespaces: list[ToolNamespaceConfig] = field(default_factory=list)
    current_date: str | None = None  # YYYY-MM-DD
    model_identity: str | None = None  # None: harmony's default identity line


def system_message(settings: PromptSettings) -> Message:
    content = SystemContent.new().with_reasoning_effort(ReasoningEffort[settings.reasoning_effort.upper()])
    if settings.model_identity is not None:
        content = content.with_model_identity(settings.model_identity)
    if settings.current_date is not None:
        content = content.with_conversation_start_date(settings.current_date)
    for namespace in settings.tool_namespaces:
        content = content.with_tools(namespace)
    return Message.from_role_and_content(Role.SYSTEM, content)


def developer_message(settings: PromptSettings) -> Message | None:
    if not settings.instructions and not settings.function_tools:
        return None
    content = DeveloperContent.new()
    if settings.instructions:
        content = content.with_instructions(settings.instructions)
    if settings.function_tools:
        content = content.with_function_tools([
            ToolDescription.new(tool.name, tool.description or "", parameters=tool.parameters)
            for tool in settings.function_tools
        ])
    return Message.from_role_and_content(Role.DEVELOPER, content)


def drop_finished_turn_analysis(history: Sequence[Message]) -> list[Message]:
    """Remove the chain of thought of turns that already ended in a `final` answer.

    Everything on the analysis channel (reasoning, built-in tool calls and their results)
    before the last assistant `final` message belongs to a finished turn. Analysis after it is
    the turn in progress (say, reasoning before a function call whose result just came back)
    and stays.
    """
    last_final = -1
    for index, message in enumerate(history):
        if message.author.role == Role.ASSISTANT and message.channel == FINAL:
            last_final = index
    return [message for index, message in enumerate(history)
            if index >= last_final or message.channel != ANALYSIS]


def render_prompt(history: Sequence[Message], settings: PromptSettings, *,
                  encode_text: Callable[[str], list[int]] | None = None) -> list[int]:
    """Prompt ids for the next assistant message: system, developer, then `history`.

    `history` holds user, assistant and tool messages only. `encode_text` (the checkpoint's tokenizer:
    same vocabulary, specials as plain text) tokenizes the text of long history messages: openai-harmony's
    encoder takes time quadratic in the length of an unbroken run of letters or punctuation (300,000
    letters: 45 s, holding the GIL), the tokenizers library linear.
    """
    messages = [system_message(settings)]
    developer = developer_message(settings)
    if developer is not None:
        messages.append(developer)
    messages.extend(drop_finished_turn_analysis(history))
    long_texts: dict[int, str] = {}  # message index -> its text, rendered empty and spliced in after
    if encode_text is not None:
        for index, message in enumerate(messages):
            if len(message.content) == 1 and isinstance(message.content[0], TextContent) \
                    and len(message.content[0].text) > LONG_TEXT_CHARS:
                long_texts[index] = message.content[0].text
                messages[index] = message.model_copy(update={"content": [TextContent(text="")]})
    for text in (settings.instructions or "", *(tool.description for tool in settings.function_tools)):
        if _UNBROKEN_RUN.search(text):
            raise UnrenderableText(f"the instructions or a tool description have a run of more than "
                                   f"{MAX_UNBROKEN_RUN} characters without a space or digit")
    encoding = get_harmony_encoding()
    try:
        # We drop analysis ourselves: the library's rule only covers a conversation that ends in final.
        ids = encoding.render_conversation_for_completion(
            Conversation.from_messages(messages), Role.ASSISTANT,
            RenderConversationConfig(auto_drop_analysis=False))
    except BaseException as error:  # a Rust panic in openai-harmony arrives as a BaseException
        if type(error).__name__ != "PanicException":
            raise
        raise UnrenderableText(f"openai-harmony failed to render the prompt ({error})") from None
    return _spliced(ids, long_texts, encode_text) if long_texts else ids  # type: ignore[arg-type]


def _spliced(ids: list[int], texts: dict[int, str], encode_text: Callable[[str], list[int]]) -> list[int]:
    """Each message renders exactly one <|message|>, right before its text: the i-th is message i's."""
    spliced: list[int] = []
    message_index = 0
    for token in ids:
        spliced.append(token)
        if token == MESSAGE:
            if message_index in texts:
                spliced.extend(encode_text(texts[message_index]))
            message_index += 1
    return spliced


# --- history message builders, one per kind of earlier item ---

def user_message(text: str) -> Message:
    return Message.from_role_and_content(Role.USER, text)


def assistant_message(text: str, channel: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)


def function_call_message(name: str, arguments: str | dict[str, Any]) -> Message:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return (Message.from_role_and_content(Role.ASSISTANT, arguments)
            .with_channel(COMMENTARY)
            .with_recipient(f"{FUNCTIONS_NAMESPACE}.{name}")
            .with_content_type("<|constrain|>json"))


def function_result_message(name: str, output: str) -> Message:
    return (Message.from_author_and_content(Author.new(Role.TOOL, f"{FUNCTIONS_NAMESPACE}.{name}"), output)
            .with_channel(COMMENTARY)
            .with_recipient("assistant"))


def builtin_call_message(recipient: str, text: str, content_type: str | None = None) -> Message:
    """A built-in tool call (`browser.search`, `python`, ...) on the analysis channel."""
    message = (Message.from_role_and_content(Role.ASSISTANT, text)
               .with_channel(ANALYSIS).with_recipient(recipient))
    return message.with_content_type(content_type) if content_type else message


def builtin_result_message(author_name: str, output: str) -> Message:
    """A built-in tool's output, authored by the tool (`browser`, `python`, ...)."""
    return (Message.from_author_and_content(Author.new(Role.TOOL, author_name), output)
            .with_channel(ANALYSIS)
            .with_recipient("assistant"))
