"""The o200k_harmony encoding from openai-harmony, loadable on an offline machine.

openai-harmony downloads `o200k_base.tiktoken` on first use unless `TIKTOKEN_ENCODINGS_BASE`
points at a folder holding it; `oss_serve.env.vocab_dir` finds a local copy for the first load.
"""

from __future__ import annotations

import functools

from openai_harmony import HarmonyEncoding, HarmonyEncodingName, load_harmony_encoding

from oss_serve.env import vocab_visible_to_harmony

# The hash tiktoken and openai-harmony check for the official vocabulary file.
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
VOCAB_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"

# Harmony special token ids (o200k_harmony). Fixed by the model; the tests check them
# against the library.
STARTOFTEXT = 199998
ENDOFTEXT = 199999
RETURN = 200002
CONSTRAIN = 200003
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012
# The role in `<|start|>assistant`: one ordinary token. A constant because openai-harmony's `encode` builds
# a regex of every special token on each call (about 1 ms), once per chat request otherwise.
ASSISTANT = 173781

FIRST_SPECIAL_ID = STARTOFTEXT
# The checkpoint's vocab_size is 201088, so the last id the model can emit is 201087.
LAST_SPECIAL_ID = 201087

# Names of the non-reserved specials; every other id in the special range is <|reserved_N|>.
NAMED_SPECIAL_TOKENS: dict[int, str] = {
    STARTOFTEXT: "<|startoftext|>",
    ENDOFTEXT: "<|endoftext|>",
    RETURN: "<|return|>",
    CONSTRAIN: "<|constrain|>",
    CHANNEL: "<|channel|>",
    START: "<|start|>",
    END: "<|end|>",
    MESSAGE: "<|message|>",
    CALL: "<|call|>",
}


def special_token_name(token_id: int) -> str:
    if not FIRST_SPECIAL_ID <= token_id <= LAST_SPECIAL_ID:
        raise ValueError(f"{token_id} is not a harmony special token id")
    return NAMED_SPECIAL_TOKENS.get(token_id, f"<|reserved_{token_id}|>")


@functools.cache
def get_harmony_encoding() -> HarmonyEncoding:
    with vocab_visible_to_harmony():
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def stop_token_ids_for_assistant() -> list[int]:
    """Ids that end an assistant turn during generation: <|return|> and <|call|>."""
    return sorted(get_harmony_encoding().stop_tokens_for_assistant_actions())
