"""Eval dataset files: a local `--dataset-path`, or the public copy, downloaded once and cached."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx

# The public copies the published gpt-oss and simple-evals numbers were measured on.
DATASET_URLS: dict[str, list[str]] = {
    "gpqa": ["https://openaipublic.blob.core.windows.net/simple-evals/gpqa_diamond.csv"],
    "mmlu": ["https://openaipublic.blob.core.windows.net/simple-evals/mmlu.csv"],
    "aime25": ["https://huggingface.co/datasets/opencompass/AIME2025/raw/main/aime2025-I.jsonl",
               "https://huggingface.co/datasets/opencompass/AIME2025/raw/main/aime2025-II.jsonl"],
    "gsm8k": ["https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl"],
}

DATASET_FORMATS: dict[str, str] = {
    "gpqa": "a CSV with columns Question, Correct Answer, Incorrect Answer 1, Incorrect Answer 2, Incorrect Answer 3",
    "mmlu": "a CSV with columns Question, A, B, C, D, Answer (a letter) and optionally Subject",
    "aime25": 'a JSONL file with one {"question": ..., "answer": ...} object per line',
    "gsm8k": 'a JSONL file with one {"question": ..., "answer": "... #### 42"} object per line',
}


class DatasetUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path.home() / ".cache" / "oss_serve" / "evals"


def _download(url: str) -> str:
    cached = cache_dir() / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    response = httpx.get(url, timeout=60.0, follow_redirects=True)
    response.raise_for_status()
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(response.text, encoding="utf-8")
    return response.text


def load_dataset_texts(eval_name: str, dataset_path: str | None) -> list[str]:
    """The raw text of each dataset file: the given paths (comma-separated), else the downloads."""
    if dataset_path:
        texts = []
        for part in dataset_path.split(","):
            path = Path(part.strip()).expanduser()
            if not path.is_file():
                raise DatasetUnavailable(f"--dataset-path {path} does not exist")
            texts.append(path.read_text(encoding="utf-8"))
        return texts
    try:
        return [_download(url) for url in DATASET_URLS[eval_name]]
    except (httpx.HTTPError, OSError) as exc:
        raise DatasetUnavailable(
            f"could not download the {eval_name} dataset ({DATASET_URLS[eval_name][0]}: {exc}). "
            f"Pass --dataset-path with a local copy: {DATASET_FORMATS[eval_name]}."
        ) from exc


def read_csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def read_jsonl_rows(text: str) -> list[dict[str, Any]]:
    stripped = text.strip()
    if stripped.startswith("["):  # a JSON array works too
        return list(json.loads(stripped))
    return [json.loads(line) for line in stripped.splitlines() if line.strip()]
