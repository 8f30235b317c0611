"""`python -m oss_serve.generate` as a user runs it."""
import json
import shutil
import subprocess
import sys

from contiguous_reference import generate_ids

from oss_serve.model.loader import load_model
from oss_serve.model.tokenizer import Tokenizer


def run_generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oss_serve.generate", *args], capture_output=True, text=True,
                          timeout=300)


def test_json_output_is_the_greedy_continuation(tiny_ckpt):
    result = run_generate("--model-path", str(tiny_ckpt), "--prompt", "San Francisco is a", "--max-new-tokens", "8",
                          "--temperature", "0", "--dtype", "float32", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    tokenizer = Tokenizer.from_pretrained(tiny_ckpt)
    assert out["prompt_ids"] == tokenizer.encode("San Francisco is a")
    model = load_model(str(tiny_ckpt), dtype="float32", device="cpu").model
    assert out["output_ids"] == generate_ids(model, out["prompt_ids"], 8)
    assert out["text"] == tokenizer.decode(out["output_ids"])


def test_chat_renders_harmony_and_prints_sections(tiny_ckpt):
    result = run_generate("--model-path", str(tiny_ckpt), "--chat", "What is 2+2?", "--reasoning-effort", "high",
                          "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert "[final]" in result.stdout or "[unparsed output]" in result.stdout


def test_dummy_weights_need_only_config(tiny_ckpt, tmp_path):
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        shutil.copy(tiny_ckpt / name, tmp_path / name)
    result = run_generate("--model-path", str(tmp_path), "--load-format", "dummy", "--prompt", "Hello",
                          "--max-new-tokens", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["output_ids"]) == 3


def test_bad_path_is_a_clear_error(tmp_path):
    result = run_generate("--model-path", str(tmp_path / "missing"), "--prompt", "x")
    assert result.returncode == 2
    assert "neither a checkpoint folder nor a hub id" in result.stderr
    assert "Traceback" not in result.stderr
