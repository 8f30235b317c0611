"""Structured outputs: grammar-constrained decoding (JSON schema, regex, EBNF, Lark) that
understands harmony, so the model reasons freely and only the answer or a strict call's
arguments are constrained. See docs/design.md, "Structured outputs"."""
