"""Host-side work of one decode step that does not shrink with a faster GPU: scheduling, the inputs of a
CUDA-graph replay (page-table sync, token columns), the engine's bookkeeping after the forward, and
pickling the step's message to the API process (and loading it there).
Runs on CPU with the tiny preset, whose forward is cheap; prints milliseconds per step per batch size.

    python benchmarks/host_step_overhead.py [--batch-sizes 1 64 256] [--context 1024]
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time

from oss_serve import LLM, SamplingParams
from oss_serve.engine.messages import StepOutputs
from oss_serve.testing.make_checkpoint import make_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--context", type=int, default=1024, help="prompt tokens per sequence")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        make_checkpoint(folder, preset="tiny", seed=0)
        largest = max(args.batch_sizes)
        llm = LLM(folder, device="cpu", max_running_requests=largest,
                  max_total_tokens=largest * (args.context + 256) + 4096)
        engine, runner = llm.engine, llm.engine.runner
        for batch in args.batch_sizes:
            # Early requests decode while later ones prefill: no length limit, the requests are aborted at the end.
            params = SamplingParams(temperature=0, max_new_tokens=None, ignore_eos=True)
            ids = [f"b{batch}-{i}" for i in range(batch)]
            for i, request_id in enumerate(ids):
                engine.add_request(request_id, [1000 + (i * 7 + j) % 5000 for j in range(args.context)], params)
            while any(engine.request_state(i).num_output_tokens == 0 for i in ids):
                engine.step()  # prefill
            inputs: list[float] = []
            messages: list[float] = []
            engine.step_times.clear()
            engine.profile = True
            for _ in range(args.steps):
                scheduled = engine.scheduler.schedule().batch  # decode only: step() repeats it unchanged
                started = time.perf_counter()
                plan = runner.plan(scheduled, list(range(len(scheduled))), None)  # what a CUDA-graph replay takes
                runner.page_tables.apply(plan.table_updates)
                inputs.append(time.perf_counter() - started)
                deltas = engine.step()
                started = time.perf_counter()
                pickle.loads(pickle.dumps(StepOutputs(deltas, engine.stats()), protocol=pickle.HIGHEST_PROTOCOL))
                messages.append(time.perf_counter() - started)
            engine.profile = False
            steps = [t for t in engine.step_times if t.is_decode]
            schedule = statistics.median(t.schedule for t in steps) * 1e3
            rest = statistics.median(t.total - t.schedule - t.forward for t in steps) * 1e3
            print(f"batch {batch:4d}, {args.context}-token context: schedule {schedule:.3f} ms, runner inputs "
                  f"{statistics.median(inputs) * 1e3:.3f} ms, after the forward {rest:.3f} ms, step message "
                  f"{statistics.median(messages) * 1e3:.3f} ms", flush=True)
            for request_id in ids:
                engine.abort(request_id)


if __name__ == "__main__":
    main()
