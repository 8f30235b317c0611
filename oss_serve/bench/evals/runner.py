"""Run one eval: every example times every repeat, on a thread pool, graded as replies come back."""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from oss_serve.bench.evals.samplers import SamplerReply
from oss_serve.bench.evals.tasks import EvalExample, EvalTask


@dataclass
class ExampleResult:
    example_id: str
    repeat: int
    prompt: str
    reply: str
    reference: str
    extracted: str | None
    score: float
    failed: bool
    error: str = ""
    attempts: int = 1


@dataclass
class EvalSummary:
    eval_name: str
    model: str
    sampler: str
    reasoning_effort: str
    score: float
    std: float
    num_examples: int
    num_failed: int
    mean_output_chars: float
    results: list[ExampleResult] = field(default_factory=list)

    def summary_line(self) -> str:
        return (f"{self.eval_name} ({self.sampler}, reasoning {self.reasoning_effort}): "
                f"score {self.score:.4f}, std {self.std:.4f}, {self.num_examples} examples, "
                f"{self.num_failed} failed, mean output {self.mean_output_chars:.1f} chars")


def run_eval(task: EvalTask, examples: list[EvalExample], sample: Callable[[str], SamplerReply], *, n_repeats: int,
             n_threads: int, model: str, sampler_name: str, reasoning_effort: str,
             show_progress: bool = True) -> EvalSummary:
    jobs = [(example, repeat) for repeat in range(n_repeats) for example in examples]

    def run_job(job: tuple[EvalExample, int]) -> ExampleResult:
        example, repeat = job
        reply = sample(example.prompt)
        grade = task.grade(example, reply.text) if reply.ok else None
        return ExampleResult(example.example_id, repeat, example.prompt, reply.text, example.reference,
                             grade.extracted if grade else None, grade.score if grade else 0.0,
                             failed=not reply.ok, error=reply.error, attempts=reply.attempts)

    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        results = list(tqdm(pool.map(run_job, jobs), total=len(jobs), desc=task.name, disable=not show_progress))

    scores = np.asarray([result.score for result in results], dtype=np.float64)
    return EvalSummary(
        eval_name=task.name, model=model, sampler=sampler_name, reasoning_effort=reasoning_effort,
        score=float(scores.mean()) if scores.size else 0.0,
        std=float(scores.std()) if scores.size else 0.0,
        num_examples=len(results), num_failed=sum(result.failed for result in results),
        mean_output_chars=float(np.mean([len(result.reply) for result in results])) if results else 0.0,
        results=results,
    )
