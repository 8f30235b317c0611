"""Answer extraction and grading on reply strings in the formats the published evals accept."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from oss_serve.bench.evals.data import DatasetUnavailable, load_dataset_texts
from oss_serve.bench.evals.grading import (
    extract_aime_answer,
    extract_boxed,
    extract_choice_letter,
    extract_final_number,
)
from oss_serve.bench.evals.report import render_html, write_reports
from oss_serve.bench.evals.runner import run_eval
from oss_serve.bench.evals.samplers import Sampler, SamplerReply, api_base_url
from oss_serve.bench.evals.tasks import get_task


@pytest.mark.parametrize("reply, letter", [
    ("Answer: B", "B"),
    ("Let me think.\n\nanswer: (C)", "C"),
    ("**Answer:** D", "D"),
    ("**Answer: A**", "A"),
    ("FINAL ANSWER: $C$", "C"),
    ("Answer: B\nWait, that is wrong.\nAnswer: C", "C"),  # the last commitment counts
    ("The answer is $\\boxed{B}$", "B"),
    ("\\boxed{\\text{D}}", "D"),
    ("So the correct answer is (A).", "A"),
    ("Working...\n\nB", "B"),
    ("Answer: \\textbf{B}", "B"),
    ("Answer: Because A is larger", None),
    ("I think A and B are both plausible", None),
    ("", None),
])
def test_choice_letter(reply: str, letter: str | None) -> None:
    assert extract_choice_letter(reply) == letter


@pytest.mark.parametrize("reply, number", [
    ("so the total is \\boxed{033}", 33),
    ("\\boxed{\\text{42}}", 42),
    ("first \\boxed{1} then \\boxed{{12}}", 12),
    ("Answer: 1,234", 1234),
    ("There are 5 cats, so 7 legs... final 19", 19),
    ("Answer: -3", -3),
    ("\\boxed{\\frac{1}{2}}", None),  # not an integer: no AIME answer
    ("no number at all", None),
])
def test_aime_answer(reply: str, number: int | None) -> None:
    assert extract_aime_answer(reply) == number


def test_boxed_and_final_numbers() -> None:
    assert extract_boxed("x \\boxed{a{b}c} y \\fbox{7}") == "7"
    assert extract_boxed("no box") is None
    assert extract_final_number("The cost is $18.00.") == 18.0
    assert extract_final_number("\\boxed{\\dfrac{3}{4}}") == 0.75


GPQA_CSV = (
    "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3,High-level domain\n"
    "What is 2+2?,4,3,5,22,Math\n"
    '"Which gas, at room temperature, is a noble gas?",Argon,Oxygen,Nitrogen,Chlorine,Chemistry\n'
    "Which planet is largest?,Jupiter,Mars,Venus,Mercury,Physics\n"
)


def test_gpqa_shuffles_with_a_fixed_seed_and_grades_the_letter() -> None:
    task = get_task("gpqa")
    examples = task.load_examples([GPQA_CSV])
    assert [e.example_id for e in examples] == ["gpqa-0", "gpqa-1", "gpqa-2"]
    assert examples == task.load_examples([GPQA_CSV])
    for example in examples:
        correct_line = next(line for line in example.prompt.splitlines()
                            if line.startswith(f"{example.reference}) "))
        assert correct_line.split(") ", 1)[1] in ("4", "Argon", "Jupiter")
        assert "'Answer: $LETTER'" in example.prompt
    first = examples[0]
    assert task.grade(first, f"Thinking.\nAnswer: {first.reference}").score == 1.0
    wrong = next(letter for letter in "ABCD" if letter != first.reference)
    grade = task.grade(first, f"Answer: {wrong}")
    assert grade.score == 0.0 and grade.extracted == wrong


def test_mmlu_aime_gsm8k_loading_and_grading() -> None:
    mmlu = get_task("mmlu")
    [example] = mmlu.load_examples(["Question,A,B,C,D,Answer,Subject\nPick C,x,y,z,w,C,misc\n"])
    assert example.reference == "C" and "C) z" in example.prompt
    assert mmlu.grade(example, "Answer: C").score == 1.0

    aime = get_task("aime25")
    [example] = aime.load_examples(['{"question": "Find n.", "answer": "033"}\n'])
    assert example.reference == "33" and "\\boxed{}" in example.prompt
    assert aime.grade(example, "so n = \\boxed{33}").score == 1.0
    assert aime.grade(example, "\\boxed{34}").score == 0.0

    gsm8k = get_task("gsm8k")
    [example] = gsm8k.load_examples(['{"question": "How many?", "answer": "3 + 4 = 7\\n#### 1,207"}'])
    assert example.reference == "1207"
    assert gsm8k.grade(example, "so\nAnswer: 1,207").score == 1.0
    assert gsm8k.grade(example, "Answer: $1207.00").score == 1.0
    assert gsm8k.grade(example, "Answer: 1208").score == 0.0


def test_dataset_path_and_offline_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "aime.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n')
    assert load_dataset_texts("aime25", str(path)) == [path.read_text()]
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        load_dataset_texts("aime25", str(tmp_path / "nope.jsonl"))

    def unreachable(*args, **kwargs):
        raise httpx.ConnectError("no network")

    monkeypatch.setattr("oss_serve.bench.evals.data.httpx.get", unreachable)
    monkeypatch.setattr("oss_serve.bench.evals.data.cache_dir", lambda: tmp_path / "empty_cache")
    with pytest.raises(DatasetUnavailable, match="--dataset-path"):
        load_dataset_texts("gpqa", None)


class _FlakySampler(Sampler):
    """Fails to connect `failures` times, then answers; no network involved."""

    def __init__(self, failures: int, max_tries: int) -> None:
        super().__init__("http://127.0.0.1:1", "m", "low", 1.0, 16, max_tries=max_tries, sleep=self._record_sleep)
        self.failures = failures
        self.sleeps: list[float] = []

    def _record_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def ask(self, prompt: str) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1:1/v1/responses"))
        return "Answer: A"


def test_connection_errors_are_retried_with_backoff_then_given_up() -> None:
    recovered = _FlakySampler(failures=2, max_tries=5)
    reply = recovered("q")
    assert reply.ok and reply.attempts == 3 and recovered.sleeps == [1.0, 2.0]
    hopeless = _FlakySampler(failures=100, max_tries=3)
    reply = hopeless("q")
    assert not reply.ok and reply.attempts == 3 and "gave up after 3 tries" in reply.error
    assert hopeless.sleeps == [1.0, 2.0]


def test_run_eval_scores_counts_failures_and_writes_reports(tmp_path: Path) -> None:
    task = get_task("gpqa")
    examples = task.load_examples([GPQA_CSV])
    answers = {e.prompt: e.reference for e in examples}

    def sample(prompt: str) -> SamplerReply:
        if "planet" in prompt:
            return SamplerReply("", ok=False, error="gave up after 5 tries: APIConnectionError")
        return SamplerReply(f"Answer: {answers[prompt]}", ok=True)

    summary = run_eval(task, examples, sample, n_repeats=2, n_threads=4, model="org/model", sampler_name="responses",
                       reasoning_effort="low", show_progress=False)
    assert summary.num_examples == 6 and summary.num_failed == 2
    assert summary.score == pytest.approx(4 / 6)
    assert summary.std == pytest.approx((4 / 6 * 2 / 6) ** 0.5)
    assert [r.repeat for r in summary.results] == [0, 0, 0, 1, 1, 1]
    assert "score 0.6667" in summary.summary_line() and "2 failed" in summary.summary_line()

    json_path, html_path = write_reports(summary, tmp_path, "20250101_000000")
    record = json.loads(json_path.read_text())
    assert record["score"] == pytest.approx(4 / 6) and len(record["results"]) == 6
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "What is 2+2?" in page and "gave up after 5 tries" in page
    assert "<script" not in render_html(summary)


def test_api_base_url() -> None:
    assert api_base_url("http://h:1") == "http://h:1/v1"
    assert api_base_url("http://h:1/v1/") == "http://h:1/v1"
