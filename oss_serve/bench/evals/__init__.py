"""Accuracy evals (GPQA, AIME25, MMLU, GSM8K) against any OpenAI-compatible server."""
