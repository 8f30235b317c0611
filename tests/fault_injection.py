"""Faults injected into a real engine on demand: a forward pass or a sampling call that raises whenever
a request whose prompt starts with a marker token is in the step. The rest of the engine is the real one.

In a test process, apply the wrappers with monkeypatch; for an engine process (a server), `install()`
runs from the `sitecustomize.py` that `write_sitecustomize` puts on the child's PYTHONPATH."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

FORWARD_FAULT_TOKEN = 4242  # a prompt starting with it makes the forward pass of its step raise
SAMPLING_FAULT_TOKEN = 4243  # ... the sampling of its step
ENV_SWITCH = "OSS_SERVE_TEST_INJECT_FAULTS"


def _marked(requests: Any, token: int) -> bool:
    return any(request.prompt_ids[:1] == [token] for request in requests)


def faulty_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        if _marked((seq.request for seq in batch), FORWARD_FAULT_TOKEN):
            raise RuntimeError("injected fault in the forward pass")
        return forward(self, batch, *args, **kwargs)
    return wrapper


def faulty_sample(sample: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(logits: Any, requests: Any, *args: Any, **kwargs: Any) -> Any:
        if _marked(requests, SAMPLING_FAULT_TOKEN):
            raise RuntimeError("injected fault in sampling")
        return sample(logits, requests, *args, **kwargs)
    return wrapper


def install() -> None:
    from oss_serve.engine import engine_core, model_runner

    model_runner.ModelRunner.forward = faulty_forward(model_runner.ModelRunner.forward)
    engine_core.sample = faulty_sample(engine_core.sample)


def write_sitecustomize(folder: Path) -> Path:
    """A folder to put first on a child's PYTHONPATH: its interpreters install the faults at start-up
    when ENV_SWITCH is set (the HTTP server's too, where they are never reached)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import os, sys\n"
        f"if os.environ.get({ENV_SWITCH!r}):\n"
        f"    sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "    import fault_injection\n"
        "    fault_injection.install()\n")
    return folder
