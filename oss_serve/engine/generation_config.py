"""The checkpoint's generation_config.json: default sampling settings and extra end-of-sequence ids."""
from __future__ import annotations

import json
from pathlib import Path

from oss_serve.engine.sampling_params import SamplingParams


def default_sampling_params(folder: Path | str) -> SamplingParams:
    """SamplingParams with the checkpoint's generation_config.json defaults filled in."""
    params = SamplingParams()
    path = Path(folder) / "generation_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        if config.get("do_sample") is False:
            params.temperature = 0.0
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
            if config.get(name) is not None:
                setattr(params, name, type(getattr(params, name))(config[name]))
        if config.get("max_new_tokens") is not None:
            params.max_new_tokens = int(config["max_new_tokens"])
    return params


def generation_eos_ids(folder: Path | str) -> tuple[int, ...]:
    path = Path(folder) / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        if eos is not None:
            return tuple(eos) if isinstance(eos, list) else (eos,)
    return ()
