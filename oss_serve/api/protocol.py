"""Request bodies of the OpenAI-compatible and native endpoints, as pydantic models.

Unknown fields are accepted (SGLang clients send extra sampling fields); wrong types are a 400
naming the field (see errors.py). Responses use the `openai` package's own models.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from oss_serve.engine.sampling_params import INT64_MAX, INT64_MIN, MAX_N, MAX_TOP_LOGPROBS

# One request fans out to at most this many engine sequences (prompts x n); more would be unbounded work
# on the event loop before anything is admitted.
MAX_SEQUENCES_PER_REQUEST = 2048
MAX_TOOLS = 128  # OpenAI's bound on the functions of one request
# openai-harmony renders about 8,000 messages a second, holding the event loop: a bound keeps that under a
# second (and a conversation that long would hardly fit the context: 16 tokens a message at 131,072).
MAX_MESSAGES = 8192


class Lenient(BaseModel):
    """A request object: unknown fields pass, and an optional field sent as JSON null is not given (as
    OpenAI reads it; proxies forward nulls)."""
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _null_is_not_given(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            return {key: value for key, value in data.items() if value is not None}
        return data


class StreamOptions(Lenient):
    include_usage: bool = False


class SamplingFields(Lenient):
    """Sampling fields shared by /v1/completions and /v1/chat/completions."""
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    no_stop_trim: bool = False
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    skip_special_tokens: bool = True


class FunctionCallIn(Lenient):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ContentPart(Lenient):
    type: str
    text: str | None = None


class ChatMessageIn(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type in ("text", "input_text", "output_text"))


class FunctionDefinition(Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(Lenient):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(Lenient):
    name: str


class NamedToolChoice(Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class ResponseFormat(Lenient):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = None
    tools: list[ToolDefinition] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    # SGLang's switches: reasoning in its own field (else inline in content), and streamed.
    separate_reasoning: bool = True
    stream_reasoning: bool = True


class GenerateRequest(Lenient):
    """SGLang's native /generate body."""
    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    rid: str | None = None
    return_logprob: bool = False
    top_logprobs_num: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)
    return_text_in_logprobs: bool = False


class SeparateReasoningRequest(Lenient):
    text: str
    reasoning_parser: str | None = "gpt-oss"


class ParseFunctionCallRequest(Lenient):
    text: str
    tool_call_parser: str | None = "gpt-oss"
    tools: list[ToolDefinition] = Field(default_factory=list, max_length=MAX_TOOLS)
