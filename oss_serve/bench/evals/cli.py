"""`python -m oss_serve.bench.evals`: accuracy of a served model, the way gpt-oss's published numbers were taken.

Example: `python -m oss_serve.bench.evals --base-url http://127.0.0.1:30000/v1 --model openai/gpt-oss-120b
--eval gpqa --reasoning-effort low --sampler responses --n-threads 128`.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from oss_serve.bench.evals.data import DatasetUnavailable, load_dataset_texts
from oss_serve.bench.evals.report import write_reports
from oss_serve.bench.evals.runner import EvalSummary, run_eval
from oss_serve.bench.evals.samplers import SAMPLERS
from oss_serve.bench.evals.tasks import TASKS, get_task


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m oss_serve.bench.evals", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:30000/v1",
                        help="Server URL, with or without the trailing /v1.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--eval", default="gpqa", help=f"Comma-separated, from: {', '.join(TASKS)}.")
    parser.add_argument("--reasoning-effort", default="low", choices=("low", "medium", "high"))
    parser.add_argument("--sampler", default="responses", choices=tuple(SAMPLERS))
    parser.add_argument("--n-threads", type=int, default=64)
    parser.add_argument("--dataset-path", default=None,
                        help="Local dataset file (comma-separated for several); only with a single --eval.")
    parser.add_argument("--n-repeats", type=int, default=None,
                        help="Times each example is asked (default: 8 for gpqa and aime25, 1 otherwise).")
    parser.add_argument("--examples", type=int, default=None, help="Use only the first N examples.")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=131072, help="Most output tokens per reply.")
    parser.add_argument("--max-tries", type=int, default=5, help="Tries per request on connection errors.")
    parser.add_argument("--request-timeout", type=float, default=3600.0, help="Seconds one request may take.")
    parser.add_argument("--output-dir", default=str(Path(tempfile.gettempdir()) / "oss_serve_evals"))
    parser.add_argument("--debug", action="store_true", help="5 examples, 1 repeat.")
    parser.add_argument("--disable-tqdm", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    eval_names = [name.strip() for name in args.eval.split(",") if name.strip()]
    if args.dataset_path and len(eval_names) != 1:
        print("--dataset-path needs exactly one --eval", file=sys.stderr)
        return 2
    timestamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    sampler = SAMPLERS[args.sampler](args.base_url, args.model, args.reasoning_effort, args.temperature,
                                     args.max_tokens, max_tries=args.max_tries,
                                     request_timeout=args.request_timeout)
    summaries: list[EvalSummary] = []
    for eval_name in eval_names:
        task = get_task(eval_name)
        try:
            examples = task.load_examples(load_dataset_texts(eval_name, args.dataset_path))
        except DatasetUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        limit = 5 if args.debug else args.examples
        if limit is not None:
            examples = examples[:limit]
        n_repeats = 1 if args.debug else (args.n_repeats or task.default_repeats)
        summary = run_eval(task, examples, sampler, n_repeats=n_repeats, n_threads=args.n_threads,
                           model=args.model, sampler_name=args.sampler, reasoning_effort=args.reasoning_effort,
                           show_progress=not args.disable_tqdm)
        json_path, html_path = write_reports(summary, Path(args.output_dir), timestamp)
        print(summary.summary_line())
        print(f"Wrote {json_path} and {html_path}")
        if summary.num_failed:
            first_error = next(result.error for result in summary.results if result.failed)
            print(f"{summary.num_failed} requests failed; first error: {first_error}", file=sys.stderr)
        summaries.append(summary)
    print(json.dumps({summary.eval_name: {"score": summary.score, "std": summary.std,
                                          "num_examples": summary.num_examples, "num_failed": summary.num_failed}
                      for summary in summaries}))
    return 0 if all(summary.num_failed < summary.num_examples for summary in summaries) else 1
