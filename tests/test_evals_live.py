"""The evals end to end against the real server on the tiny checkpoint, with both samplers.

A random-weight model answers at random: these tests check the plumbing (requests answered,
graded, reported), not the score.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from server_process import shared_server, stop_shared_servers

from oss_serve.bench.evals.cli import main as evals_main

GPQA_CSV = (
    "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
    "What is 2+2?,4,3,5,22\n"
    "Which planet is largest?,Jupiter,Mars,Venus,Mercury\n"
)
AIME_JSONL = '{"question": "What is 6 times 7?", "answer": "42"}\n{"question": "What is 10 + 23?", "answer": "33"}\n'


@pytest.fixture(scope="module")
def server_url(tiny_ckpt: Path, request: pytest.FixtureRequest) -> str:
    request.config.add_cleanup(stop_shared_servers)
    return shared_server(tiny_ckpt).base_url


@pytest.mark.parametrize("sampler", ["responses", "chat_completions"])
@pytest.mark.parametrize("eval_name, file_name, content", [("gpqa", "gpqa.csv", GPQA_CSV),
                                                           ("aime25", "aime.jsonl", AIME_JSONL)])
def test_eval_runs_against_the_server(sampler: str, eval_name: str, file_name: str, content: str, tmp_path: Path,
                                      server_url: str, tiny_ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = tmp_path / file_name
    dataset.write_text(content)
    out_dir = tmp_path / "reports"
    exit_code = evals_main(["--base-url", server_url, "--model", str(tiny_ckpt), "--eval", eval_name,
                            "--sampler", sampler, "--reasoning-effort", "low", "--dataset-path", str(dataset),
                            "--n-repeats", "2", "--n-threads", "4", "--max-tokens", "16", "--max-tries", "2",
                            "--output-dir", str(out_dir), "--disable-tqdm"])
    printed = capsys.readouterr()
    assert exit_code == 0, printed.err
    assert f"{eval_name} ({sampler}, reasoning low): score" in printed.out
    [json_path] = out_dir.glob("*.json")
    record = json.loads(json_path.read_text())
    assert record["num_examples"] == 4 and record["num_failed"] == 0, record["results"][0]["error"]
    assert 0.0 <= record["score"] <= 1.0
    assert all(result["attempts"] == 1 for result in record["results"])
    [html_path] = out_dir.glob("*.html")
    assert "<table>" in html_path.read_text()
