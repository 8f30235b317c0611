"""The tokenizer the benchmark counts tokens with: the served model's own, so that prompt lengths
are exact in the server's units.

Loaded from a local `tokenizer.json` (file or folder), from the Hugging Face hub (or its cache),
or, for gpt-oss models when neither is available, from openai-harmony's `o200k_harmony`
encoding, which has the same ids as the checkpoints' `tokenizer.json`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from oss_serve.env import vocab_visible_to_harmony


class BenchTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...

    def ordinary_token_ids(self) -> range | list[int]:
        """Ids that are not special tokens, for random-id prompts."""
        ...


class HFTokenizer:
    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._special_ids = set(self._tokenizer.get_added_tokens_decoder().keys())

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def ordinary_token_ids(self) -> list[int]:
        size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        return [i for i in range(size) if i not in self._special_ids]


class HarmonyTokenizer:
    """o200k_harmony through openai-harmony; special-token text in prompts is encoded as plain text."""

    def __init__(self) -> None:
        import openai_harmony

        try:
            with vocab_visible_to_harmony():
                name = openai_harmony.HarmonyEncodingName.HARMONY_GPT_OSS
                self._encoding = openai_harmony.load_harmony_encoding(name)
        except Exception as exc:  # offline without the vocabulary file
            raise RuntimeError(
                "could not load the o200k_harmony encoding (openai-harmony downloads o200k_base.tiktoken on first "
                "use); offline, set TIKTOKEN_ENCODINGS_BASE to a folder holding o200k_base.tiktoken, or pass "
                f"--tokenizer pointing at a tokenizer.json: {exc}"
            ) from exc
        self._first_special_id = min(self._encoding.encode(t, allowed_special="all")[0]
                                     for t in self._encoding.special_tokens_set)

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, disallowed_special=())

    def decode(self, token_ids: list[int]) -> str:
        return self._encoding.decode(list(token_ids))

    def ordinary_token_ids(self) -> range:
        return range(self._first_special_id)


def _looks_like_gpt_oss(name: str) -> bool:
    lowered = name.lower()
    return "gpt-oss" in lowered or "gpt_oss" in lowered or lowered == "o200k_harmony"


def load_tokenizer(name_or_path: str) -> BenchTokenizer:
    """`name_or_path`: a tokenizer.json file, a folder holding one, a hub id, or `o200k_harmony`."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return HFTokenizer(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(path / "tokenizer.json")
        if not _looks_like_gpt_oss(name_or_path) and not _folder_is_gpt_oss(path):
            raise FileNotFoundError(f"no tokenizer.json in {path}")
        return HarmonyTokenizer()
    if name_or_path != "o200k_harmony":
        from huggingface_hub import hf_hub_download

        hub_error: Exception | None = None
        # gpt-oss models need no download: harmony's encoding is the same tokenizer.
        for local_files_only in (True,) if _looks_like_gpt_oss(name_or_path) else (True, False):
            try:
                return HFTokenizer(Path(hf_hub_download(name_or_path, "tokenizer.json",
                                                        local_files_only=local_files_only)))
            except Exception as exc:  # not cached, offline, private or not a hub id
                hub_error = exc
        if not _looks_like_gpt_oss(name_or_path):
            raise RuntimeError(f"could not load a tokenizer for {name_or_path!r}: {hub_error}")
    return HarmonyTokenizer()


def _folder_is_gpt_oss(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "gpt_oss"
    except (OSError, ValueError):
        return False
