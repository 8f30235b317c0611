"""oss-serve: a compact serving engine for gpt-oss."""
