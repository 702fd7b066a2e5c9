"""``promptkit serve``: a real server process on localhost, spoken to over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from conftest import run_config, sentiment_rows

import promptkit
from promptkit.core.run_folder import ENSEMBLE_FILE
from promptkit.runs.config import validate_config
from promptkit.runs.fitting import fit

TEXTS = ["the movie was great", "a dull plot", "so bad", "i loved this film"]


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory) -> dict[str, Path]:
    """Three small runs on the tiny GPT-2: two classifiers and a generator."""
    root = tmp_path_factory.mktemp("serve")
    for name, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2)):
        rows = sentiment_rows(n, seed)
        for row in rows:
            row["target"] = "it was " + row["text"].split()[-1]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipes = {
        "mood": {},
        "mood-prefix": {
            "template": "[P*3] <x> it was [MASK].",
            "prompts": {"placement": "prefix", "encoder": "none"},
        },
        "writer": {
            "template": "[P*2] <x> so",
            "head": {"type": "generation", "max_new_tokens": 4},
        },
    }
    made = {}
    for name, extra in recipes.items():
        config = run_config(model_dir("gpt2"), root, output_dir=str(root / name), **extra)
        config["trainer"]["epochs"] = 1
        if name == "writer":
            config["data"] = {**config["data"], "label_column": "target", "label_map": None}
        made[name] = fit(validate_config(config)).run_dir
    return made


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``promptkit serve`` in its own process, and a client for it."""

    def __init__(self, runs: dict[str, Path], *options: str) -> None:
        self.port = _port()
        args = [f"{name}={path}" for name, path in runs.items()]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "promptkit", "serve", *args, "--port", str(self.port), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stdout.read().decode())
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def post(self, **body) -> httpx.Response:
        return httpx.post(self.url + "/predict", json=body, timeout=60)

    def stop(self) -> bool:
        """SIGTERM; whether the server then ended cleanly (uvicorn ends by raising the
        signal it caught again, once it has shut down)."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60) in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def server(runs):
    server = Server(runs, "--max-wait-ms", "200", "--max-inputs", "8", "--max-chars", "200")
    yield server
    assert server.stop()


def test_it_answers_as_each_run_does_alone(server, runs):
    assert httpx.get(server.url + "/health").json()["runs"] == 3
    hosted = {t["run"]: t for t in httpx.get(server.url + "/runs").json()}
    assert hosted["mood"]["classes"] == ["positive", "negative"]
    assert hosted["writer"]["classes"] is None and hosted["writer"]["head"] == "generation"
    assert "/predict" in httpx.get(server.url + "/openapi.json").json()["paths"]
    for name, run in runs.items():
        alone = promptkit.load(run)
        response = server.post(run=name, inputs=TEXTS, probabilities=name != "writer")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["predictions"] == alone.predict(TEXTS)
        if name != "writer":
            for got, want in zip(body["probabilities"], alone.predict_proba(TEXTS), strict=True):
                assert all(abs(got[c] - want[c]) < 1e-5 for c in want)


def test_the_former_names_task_and_tasks_still_work(server):
    former = server.post(task="mood", inputs=TEXTS[:1])
    assert former.status_code == 200 and former.json()["run"] == "mood"
    assert httpx.get(server.url + "/tasks").json() == httpx.get(server.url + "/runs").json()


def test_concurrent_requests_share_batches(server, runs):
    expected = {name: promptkit.load(run).predict(TEXTS) for name, run in runs.items()}
    before = httpx.get(server.url + "/health").json()
    jobs = [(name, text) for text in TEXTS for name in runs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda job: server.post(run=job[0], inputs=[job[1]]), jobs))
    for (name, text), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200
        assert response.json()["predictions"] == [expected[name][TEXTS.index(text)]]
    after = httpx.get(server.url + "/health").json()
    assert after["requests"] - before["requests"] == len(jobs)
    assert after["batches"] - before["batches"] < len(jobs)  # requests were batched together


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"run": "nope", "inputs": ["a"]}, 404, "no run is named 'nope'"),
        ({"run": "mood", "inputs": "the movie"}, 422, "list"),
        ({"run": "mood", "inputs": [5]}, 422, ""),
        ({"run": "mood", "inputs": []}, 422, ""),
        ({"run": "mood", "inputs": ["a"], "extra": 1}, 422, "extra"),
        ({"run": "mood"}, 422, "inputs"),
        ({"run": "mood", "inputs": ["a"] * 9}, 413, "9 inputs are more than the 8"),
        ({"run": "mood", "inputs": ["a" * 201]}, 413, "over the 200 characters"),
        ({"run": "writer", "inputs": ["a"], "probabilities": True}, 400, "no probabilities"),
        ({"run": "mood", "inputs": [{"y": "a"}]}, 400, ""),
    ],
)
def test_bad_requests_get_a_clear_4xx(server, body, status, message):
    response = server.post(**body)
    assert response.status_code == status, response.text
    assert message in response.text


def test_oversize_bodies_and_bad_requests_harm_no_one(server, runs):
    huge = httpx.post(
        server.url + "/predict", content=b"x" * (2 << 20), headers={"content-type": "text/plain"}
    )
    assert huge.status_code == 413
    chunked = httpx.post(  # no content-length: the limit holds as the body comes in
        server.url + "/predict",
        content=(b"x" * 65536 for _ in range(40)),
        headers={"content-type": "application/json"},
    )
    assert chunked.status_code == 413 and "over" in chunked.text
    surrogate = httpx.post(
        server.url + "/predict",
        content=b'{"run": "mood", "inputs": ["\\ud800 great"]}',
        headers={"content-type": "application/json"},
    )
    assert surrogate.status_code == 400 and "not valid Unicode" in surrogate.text
    expected = promptkit.load(runs["mood"]).predict(TEXTS)
    bodies = [{"run": "mood", "inputs": TEXTS}, {"run": "mood", "inputs": [{"y": 1}]}] * 4
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: server.post(**body), bodies))
    assert [r.status_code for r in responses] == [200, 422] * 4
    assert all(r.json()["predictions"] == expected for r in responses[::2])


def test_shutdown_answers_requests_in_flight(runs):
    server = Server({"mood": runs["mood"]}, "--max-wait-ms", "1500")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(server.post, run="mood", inputs=TEXTS)
        time.sleep(0.5)  # the request now waits in a batch that closes after 1.5 s
        clean = server.stop()
        response = pending.result()
    assert response.status_code == 200 and len(response.json()["predictions"]) == len(TEXTS)
    assert clean


def test_serve_reports_mistakes_without_a_traceback(runs, tmp_path):
    from typer.testing import CliRunner

    from promptkit.cli import app

    def serve(*args: str):
        return CliRunner().invoke(app, ["serve", *args], catch_exceptions=False)

    missing = serve(str(tmp_path / "nowhere"))
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    twice = serve(f"a={runs['mood']}", f"a={runs['writer']}")
    assert twice.exit_code == 2 and "two runs are named 'a'" in twice.output
    limits = serve(str(runs["mood"]), "--max-batch", "0")
    assert limits.exit_code == 2 and "max_batch is at least 1" in limits.output
    for wait in ("nan", "inf"):
        waits = serve(str(runs["mood"]), "--max-wait-ms", wait)
        assert waits.exit_code == 2 and f"finite 0 or more, not {wait}" in waits.output
    port = serve(str(runs["mood"]), "--port", "99999")
    assert port.exit_code == 2 and "Traceback" not in port.output


def test_serve_checks_runs_and_port_before_loading(runs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import promptkit.serving.host
    import promptkit.serving.server
    from promptkit.cli import app
    from promptkit.core.run_folder import RunFolder

    loaded = []

    def load(named, device):
        loaded.append(named)
        return SimpleNamespace(runs=list(named))

    monkeypatch.setattr(promptkit.serving.host, "host_runs", load)
    served = []
    monkeypatch.setattr(promptkit.serving.server, "serve", lambda *args: served.append(args))

    def serve(*args: str):
        return CliRunner().invoke(app, ["serve", *args], catch_exceptions=False)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = serve(str(runs["mood"]), "--port", port)
    assert busy.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.output
    nowhere = serve(str(runs["mood"]), "--host", "no-such-host.invalid")
    assert nowhere.exit_code == 2 and "cannot listen on no-such-host.invalid" in nowhere.output
    assert not loaded
    unfinished = tmp_path / "unfinished"
    shutil.copytree(runs["mood"], unfinished)
    RunFolder(unfinished).mark("training")
    warned = serve(str(unfinished), "--port", str(_port()))
    assert warned.exit_code == 0 and "has not finished training" in warned.output
    assert "serving its best epoch so far" in warned.output and loaded
    any_port = serve(str(runs["mood"]), "--port", "0")
    port = served[-1][2]
    assert any_port.exit_code == 0 and port > 0 and f"127.0.0.1:{port}" in any_port.output


def test_a_run_that_cannot_share_the_backbone_is_refused_before_any_loads(
    runs, tmp_path, monkeypatch
):
    import promptkit.serving.host

    joint = tmp_path / "joint"
    shutil.copytree(runs["writer"], joint)
    document = json.loads((joint / "promptkit.json").read_text())
    document["recipe"]["ensemble"] = {"members": [{}, {}]}
    (joint / "promptkit.json").write_text(json.dumps(document))
    monkeypatch.setattr(
        promptkit.serving.host, "load_run", lambda *args: pytest.fail("a run loaded")
    )
    with pytest.raises(promptkit.PromptkitError, match="is an ensemble trained jointly"):
        promptkit.load({"mood": runs["mood"], "joint": joint})
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / ENSEMBLE_FILE).write_text("{}")
    with pytest.raises(promptkit.PromptkitError, match=r"is an ensemble of runs: .* \(NAME=RUN"):
        promptkit.load({"mood": runs["mood"], "saved": saved})


def test_an_empty_input_is_answered_as_predict_answers_it(server, runs):
    inputs = ["", "so bad"]
    response = server.post(run="mood", inputs=inputs)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == promptkit.load(runs["mood"]).predict(inputs)
