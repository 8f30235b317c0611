"""Build a Hugging Face `tokenizer.json` for o200k_harmony from the tiktoken rank file.

Test checkpoints need the same tokenizer.json the hub ships with gpt-oss, but no weights or
hub files can be downloaded here. The rank file (`o200k_base.tiktoken`) plus the harmony
special tokens determine it completely:

- BPE vocabulary: each token's bytes, written through the GPT-2 byte-to-unicode map that
  byte-level BPE in `tokenizers` uses.
- Merges: tiktoken has none; it merges the adjacent pair whose concatenation has the lowest
  rank. A token's merge is found by running that procedure on its own bytes with only the
  ranks below its own: it must end in exactly two parts. Ordering merges by the rank of their
  result makes `tokenizers`' merge priority equal tiktoken's rank priority.
- tiktoken returns a pre-token that is itself in the vocabulary as one token without running
  BPE; `ignore_merges` gives the same behaviour.

Usage: `python -m oss_serve.testing.tokenizer_json OUT.json`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from oss_serve.env import VOCAB_FILE_NAME, vocab_dir
from oss_serve.env import cache_dir as default_cache_dir
from oss_serve.harmony.encoding import (
    FIRST_SPECIAL_ID,
    LAST_SPECIAL_ID,
    VOCAB_SHA256,
    VOCAB_URL,
    special_token_name,
)

# Bump when the generated JSON changes so that stale cached files are not reused.
BUILD_FORMAT_VERSION = 1

# tiktoken's pre-tokenizer pattern for o200k_base (and so o200k_harmony).
O200K_PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])


def byte_to_unicode_table() -> list[str]:
    """The GPT-2 byte-level alphabet: byte value -> printable character standing for it.

    Printable Latin-1 bytes map to themselves; the rest are shifted to code points from 256
    up, in byte order.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = iter(range(256, 512))
    return [chr(byte) if byte in printable else chr(next(shifted)) for byte in range(256)]


def load_tiktoken_ranks(vocab_file: Path) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one `base64(token bytes) rank` per line."""
    pairs = (line.split() for line in vocab_file.read_bytes().splitlines() if line.strip())
    return {base64.b64decode(encoded): int(rank) for encoded, rank in pairs}


def _bpe_parts_below_rank(token: bytes, ranks: dict[bytes, int], rank_limit: int) -> list[bytes]:
    """tiktoken's BPE on `token` using only ranks below `rank_limit`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank = rank_limit
        best_index = -1
        for index in range(len(parts) - 1):
            pair_rank = ranks.get(parts[index] + parts[index + 1])
            # Strict `<` keeps the leftmost pair on ties, as tiktoken does.
            if pair_rank is not None and pair_rank < best_rank:
                best_rank = pair_rank
                best_index = index
        if best_index < 0:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge producing each multi-byte token, in the order of the tokens' ranks.

    A token whose bytes BPE never assembles into it (its lower-rank BPE ends in more than
    two parts) gets no merge: tiktoken can only emit it when it is a whole pre-token, which
    `ignore_merges` covers.
    """
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _bpe_parts_below_rank(token, ranks, rank)
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


def special_tokens() -> list[tuple[int, str]]:
    """(id, text) of every harmony special token the checkpoint vocabulary holds."""
    return [(token_id, special_token_name(token_id)) for token_id in range(FIRST_SPECIAL_ID, LAST_SPECIAL_ID + 1)]


def build_tokenizer_json(vocab_file: Path) -> dict[str, Any]:
    """The tokenizer.json content (as a dict) for o200k_harmony."""
    ranks = load_tiktoken_ranks(vocab_file)
    if len(ranks) != FIRST_SPECIAL_ID:
        raise ValueError(f"{vocab_file}: expected {FIRST_SPECIAL_ID} ranks, found {len(ranks)}")
    byte_chars = byte_to_unicode_table()

    def as_text(token: bytes) -> str:
        return "".join(byte_chars[byte] for byte in token)

    vocab = {as_text(token): rank for token, rank in ranks.items()}
    merges = [[as_text(left), as_text(right)] for left, right in derive_merges(ranks)]
    added_tokens = [{"id": token_id, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True} for token_id, text in special_tokens()]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": False},
                # The split above already did the regex work; this step only maps bytes to chars.
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }


def _sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locate_vocab_file(cache_dir: Path | None = None) -> Path:
    """`o200k_base.tiktoken` from the local vocab folder, else downloaded into the cache.

    Raises OSError when it is neither present nor downloadable.
    """
    if (local := vocab_dir()) is not None:
        return local / VOCAB_FILE_NAME
    cached = (cache_dir or default_cache_dir()) / VOCAB_FILE_NAME
    if cached.is_file() and _sha256_of(cached) == VOCAB_SHA256:
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(VOCAB_URL, timeout=60) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != VOCAB_SHA256:
        raise OSError(f"downloaded {VOCAB_URL} does not have the expected sha256")
    _write_atomically(cached, data)
    return cached


def _write_atomically(path: Path, data: bytes) -> None:
    # Concurrent test runs may build the same file; a rename never exposes a partial one.
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def cached_tokenizer_json(cache_dir: Path | None = None, vocab_file: Path | None = None) -> Path:
    """Path of the built tokenizer.json, building it on the first call for this vocabulary."""
    cache_dir = cache_dir or default_cache_dir()
    vocab_file = vocab_file or locate_vocab_file(cache_dir)
    vocab_sha = _sha256_of(vocab_file)
    target = cache_dir / f"tokenizer-o200k_harmony-{vocab_sha[:16]}-v{BUILD_FORMAT_VERSION}.json"
    if not target.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        content = build_tokenizer_json(vocab_file)
        _write_atomically(target, json.dumps(content, ensure_ascii=False).encode("utf-8"))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write tokenizer.json")
    args = parser.parse_args()
    args.out.write_bytes(cached_tokenizer_json().read_bytes())
    print(args.out)


if __name__ == "__main__":
    main()
