"""The OpenAI Responses API (/v1/responses): harmony prompts from input items, the built-in tool
loop, streaming events, stored and background responses. Entry point: `install_responses_api`."""
