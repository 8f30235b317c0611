"""An exception while the engine runs a step ends the requests of that step with an error, and only
those: the engine logs it once and serves the others and the next ones. Faults are injected into the
real tiny-checkpoint engine (tests/fault_injection.py), in process and behind a real server."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from fault_injection import (
    ENV_SWITCH,
    FORWARD_FAULT_TOKEN,
    SAMPLING_FAULT_TOKEN,
    faulty_forward,
    faulty_sample,
    write_sitecustomize,
)
from server_process import ServerProcess

from oss_serve import LLM, SamplingParams
from oss_serve.engine import engine_core, model_runner

GREEDY = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)


def _run_to_end(core: engine_core.EngineCore) -> dict[str, list]:
    """Step as the engine process does until nothing is left; every delta of each request."""
    deltas: dict[str, list] = {}
    for _ in range(200):
        if not core.has_work:
            return deltas
        for delta in core.step_isolated():
            deltas.setdefault(delta.request_id, []).append(delta)
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("fault_token", [FORWARD_FAULT_TOKEN, SAMPLING_FAULT_TOKEN], ids=["forward", "sampling"])
def test_a_failing_step_ends_only_its_requests(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture, fault_token: int) -> None:
    monkeypatch.setattr(model_runner.ModelRunner, "forward", faulty_forward(model_runner.ModelRunner.forward))
    monkeypatch.setattr(engine_core, "sample", faulty_sample(engine_core.sample))
    core = LLM(str(tiny_ckpt), max_total_tokens=2048, page_size=4).engine
    pages_free = core.scheduler.full_pool.num_free
    # A long request gets going first; the poisoned one joins it mid-decode, so that step fails for both.
    core.add_request("early", [11, 12, 13], SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True))
    core.step_isolated()
    core.add_request("poisoned", [fault_token, 5, 6, 7], GREEDY)
    deltas = _run_to_end(core)
    for request_id in ("early", "poisoned"):
        last = deltas[request_id][-1]
        assert last.finished and last.error_status == 500 and "injected fault" in last.error, last
    assert sum("a step failed" in record.message for record in caplog.records) == 1
    assert core.scheduler.full_pool.num_free == pages_free  # failed requests hold no pages (nor cache any)
    # The engine serves on: the next requests (with the poisoned one's neighbours) complete.
    expected = LLM(str(tiny_ckpt), max_total_tokens=2048, page_size=4).generate([[21, 22, 23]], GREEDY)[0]
    core.add_request("after", [21, 22, 23], GREEDY)
    after = _run_to_end(core)["after"]
    assert after[-1].error is None and after[-1].finish_reason == "length"
    assert [t for d in after for t in d.new_token_ids] == expected.token_ids


@pytest.fixture(scope="module")
def faulty_server(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    site = write_sitecustomize(tmp_path_factory.mktemp("faults"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_SWITCH, "1")
        patch.setenv("PYTHONPATH", f"{site}:{__import__('os').environ.get('PYTHONPATH', '')}")
        server = ServerProcess(tiny_ckpt, ["--max-total-tokens", "4096", "--context-length", "1024"])
    yield server
    server.stop()


@pytest.mark.parametrize("fault_token", [FORWARD_FAULT_TOKEN, SAMPLING_FAULT_TOKEN], ids=["forward", "sampling"])
def test_the_server_answers_a_failing_request_with_500_and_serves_on(faulty_server: ServerProcess,
                                                                      fault_token: int) -> None:
    url = faulty_server.base_url
    poisoned = {"prompt": [fault_token, 1, 2], "max_tokens": 4}
    response = httpx.post(f"{url}/v1/completions", json=poisoned, timeout=45)
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["type"] == "server_error" and "injected fault" in error["message"], error
    with httpx.stream("POST", f"{url}/v1/completions", json={**poisoned, "stream": True}, timeout=45) as stream:
        events = [line.removeprefix("data: ") for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == 500, events
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    served = httpx.post(f"{url}/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 4}, timeout=45)
    assert served.status_code == 200 and served.json()["choices"][0]["finish_reason"] == "length", served.text
    assert faulty_server.process.poll() is None
    assert faulty_server.log_text().count("a step failed") >= 1
