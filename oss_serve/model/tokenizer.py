"""Text <-> token ids for a checkpoint, from its `tokenizer.json` (Hugging Face format)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import tokenizers


def _byte_level_symbols() -> dict[str, int]:
    """Byte-level BPE spells each byte as one printable character: printable latin-1 bytes as
    themselves, the other 68 as code points 256, 257, ... in byte order. Returns symbol -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols = {chr(b): b for b in printable}
    others = sorted(set(range(256)) - set(printable))
    symbols.update({chr(256 + n): b for n, b in enumerate(others)})
    return symbols


_BYTE_OF_SYMBOL = _byte_level_symbols()


class Tokenizer:
    """A checkpoint's tokenizer.

    Text that spells a special token (say "<|start|>" inside user content) is encoded as plain
    text unless the caller asks otherwise, so that prompt text can never inject control tokens.
    """

    def __init__(self, tokenizer_json: str, eos_token_ids: Sequence[int] = ()) -> None:
        self._tokenizer_json = tokenizer_json
        # `encode_special_tokens` is a property of the whole tokenizer object, not an encode()
        # argument, so each behaviour gets its own instance (safe to share across threads).
        self._plain_text = tokenizers.Tokenizer.from_str(tokenizer_json)
        self._plain_text.encode_special_tokens = True
        self.eos_token_ids: list[int] = list(eos_token_ids)

    @functools.cached_property
    def _with_specials(self) -> tokenizers.Tokenizer:
        return tokenizers.Tokenizer.from_str(self._tokenizer_json)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Tokenizer:
        """Load from a checkpoint folder holding tokenizer.json (and generation_config.json)."""
        folder = Path(folder)
        tokenizer_json = (folder / "tokenizer.json").read_text(encoding="utf-8")
        # generation_config.json lists every id that ends generation; config.json often only one.
        for config_path in (folder / "generation_config.json", folder / "config.json"):
            if not config_path.is_file():
                continue
            eos = json.loads(config_path.read_text(encoding="utf-8")).get("eos_token_id")
            if eos is not None:
                return cls(tokenizer_json, [eos] if isinstance(eos, int) else [int(token_id) for token_id in eos])
        return cls(tokenizer_json)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, special tokens included."""
        return self._plain_text.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`; special-token text becomes control tokens only if allowed."""
        tokenizer = self._with_specials if allow_special else self._plain_text
        return tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._plain_text.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary entry for `token_id` (byte-level alphabet for BPE tokens)."""
        return self._plain_text.id_to_token(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for: part of a UTF-8 character for some BPE tokens, which is why
        logprobs report bytes beside the decoded text."""
        if token_id in self._special_ids:
            return self.decode([token_id]).encode()
        entry = self.id_to_token(token_id) or ""
        return bytes(_BYTE_OF_SYMBOL.get(symbol, 0) for symbol in entry)

    @functools.cached_property
    def _special_ids(self) -> frozenset[int]:
        return frozenset(self._plain_text.get_added_tokens_decoder())

    def token_to_id(self, token: str) -> int | None:
        return self._plain_text.token_to_id(token)
