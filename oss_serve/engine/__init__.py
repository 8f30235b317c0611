"""The serving engine: continuous batching over a paged KV cache, offline (`LLM`) and async (`AsyncEngine`) APIs."""
