"""Where a decode step's time goes, on gpt-oss-20b shapes with dummy MXFP4 weights and fp8 KV.

For each batch size: the engine's median step time and its forward (prepare + graph replay + sampling)
over a run of 1024-token prompts, the GPU time of one replay of that batch's CUDA graph alone, the wall
time of a full-batch decode step with the overlapped schedule against the plain one, and an eager step
under the profiler (kernels per step, top kernels by GPU time).

    python benchmarks/gpu_profile_decode.py --model-path DIR   (a --config-only folder of make_checkpoint)
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from oss_serve import LLM, SamplingParams


def graph_replay_ms(llm: LLM, batch: int, repeats: int = 50) -> float | None:
    """GPU time of one replay of the graph that served the last decode steps of `batch` sequences
    (its static buffers still hold that step's tables and lengths)."""
    graphs = llm.engine.runner.graphs
    if graphs is None:
        return None
    size = next(s for s in graphs.sizes if s >= batch)
    graph = graphs.graphs[size]
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def decode_step_ms(llm: LLM, prompts: list[list[int]], steps: int, overlap: bool, sync: Callable[[], None]) -> float:
    """Wall time per engine step while every sequence decodes (not profiling: profiling waits each step)."""
    engine = llm.engine
    engine.overlap = overlap
    engine.flush_cache()
    ids = [f"timed-{overlap}-{i}" for i in range(len(prompts))]
    for request_id, prompt in zip(ids, prompts):
        engine.add_request(request_id, prompt, SamplingParams(temperature=0, max_new_tokens=None, ignore_eos=True))
    while any(engine.request_state(i).num_output_tokens == 0 for i in ids):
        engine.step()  # prefill
    for _ in range(4):
        engine.step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync()
    elapsed = time.perf_counter() - started
    for request_id in ids:
        engine.abort(request_id)
    while engine.has_work:
        engine.step()
    return elapsed / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--input-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=96)
    parser.add_argument("--profile-steps", type=int, default=8)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
    device_type = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    llm = LLM(args.model_path, load_format="dummy", device=args.device, kv_cache_dtype="fp8_e4m3",
              cuda_graph_max_bs=max(args.batch_sizes),
              **({"mem_fraction_static": 0.85} if cuda else {"max_total_tokens": 8192}))
    engine = llm.engine
    for batch in args.batch_sizes:
        prompts = [[1000 + (i * 7 + j) % 5000 for j in range(args.input_len)] for i in range(batch)]
        params = SamplingParams(temperature=0, max_new_tokens=args.steps, ignore_eos=True)
        llm.generate(prompts[:min(batch, 4)], SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))
        engine.flush_cache()
        engine.step_times.clear()
        engine.profile = True
        llm.generate(prompts, params)
        engine.profile = False
        decode = [t for t in engine.step_times if t.is_decode and t.num_seqs == batch]
        step_ms, schedule_ms, forward_ms = (1e3 * statistics.median(getattr(t, name) for t in decode)
                                            for name in ("total", "schedule", "forward"))
        replay = graph_replay_ms(llm, batch) if cuda else None
        replay_text = f"{replay:.3f} ms" if replay is not None else "no graph"
        print(f"== batch {batch} ({len(decode)} full-batch decode steps): engine step {step_ms:.3f} ms (schedule "
              f"{schedule_ms:.3f}, forward+sample {forward_ms:.3f}, rest {step_ms - schedule_ms - forward_ms:.3f}), "
              f"graph replay alone {replay_text}, {batch / step_ms * 1e3:.0f} output tok/s", flush=True)
        default_overlap = engine.overlap
        plain, overlapped = (decode_step_ms(llm, prompts, args.steps, overlap, sync) for overlap in (False, True))
        engine.overlap = default_overlap
        print(f"   decode step wall time: plain schedule {plain:.3f} ms, overlapped {overlapped:.3f} ms "
              f"({plain / overlapped:.2f}x; {batch / overlapped * 1e3:.0f} output tok/s)", flush=True)

        graphs, engine.runner.graphs = engine.runner.graphs, None  # eager, so the profiler sees each kernel
        engine.flush_cache()
        short = SamplingParams(temperature=0, max_new_tokens=args.profile_steps + 4, ignore_eos=True)
        ids = [f"profile-{batch}-{i}" for i in range(batch)]
        for request_id, prompt in zip(ids, prompts):
            engine.add_request(request_id, prompt[:64], short)
        while any(engine.request_state(i).num_output_tokens == 0 for i in ids):
            engine.step()  # prefill, outside the profile
        engine.step()
        sync()
        with profile(activities=[activity]) as prof:
            for _ in range(args.profile_steps):
                engine.step()
            sync()
        while engine.has_work:
            engine.step()
        engine.runner.graphs = graphs
        events = [e for e in prof.key_averages() if e.device_type == device_type]
        kernels = sum(e.count for e in events)
        total_us = sum(e.device_time_total for e in events)
        steps = args.profile_steps
        print(f"   eager decode: {kernels / steps:.0f} kernels per step, {total_us / steps / 1e3:.3f} ms GPU per step")
        for e in sorted(events, key=lambda e: -e.device_time_total)[:args.top]:
            print(f"   {e.device_time_total / steps:9.1f} us/step {e.count / steps:6.1f}x  {e.key[:90]}")
        engine.flush_cache()


if __name__ == "__main__":
    main()
