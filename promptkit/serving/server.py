"""An HTTP server for a ``Host``: many trained prompts behind one frozen backbone.

Routes (OpenAPI docs at ``/docs``): ``POST /predict`` (a hosted run's name and its inputs;
the class probabilities on request), ``GET /runs`` (each run's template, head and classes)
and ``GET /health``. Concurrent requests, for any runs, are micro-batched: the first waiting
request opens a batch that closes when it holds ``max_batch`` rows or ``max_wait_ms`` has
passed, and the whole batch is one ``Host.answer`` call (shared backbone forwards). A request
is checked and encoded on its own before it joins a batch, so a bad one gets a 4xx and never
harms the others; bounds on body size, inputs per request and input length hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from promptkit.errors import PromptkitError
from promptkit.serving.host import Answer, Host, Row
from promptkit.text.decoding import empty_report

log = logging.getLogger("promptkit.serving.server")


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


Item = str | list[str] | dict[str, str | list[str]]


@dataclass(frozen=True)
class Limits:
    """What the server accepts and how it batches.

    Args:
        max_batch: most rows in one shared batch.
        max_wait_ms: longest a batch waits for more requests once one is waiting.
        max_inputs: most inputs in one request.
        max_chars: longest text of one input (all its fields together).
        max_body_bytes: largest request body.
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_inputs: int = 64
    max_chars: int = 10_000
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_inputs", "max_chars", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise PromptkitError(f"{name} is at least 1, not {getattr(self, name)}.")
        if not 0 <= self.max_wait_ms < math.inf:  # also refuses NaN
            raise PromptkitError(f"max_wait_ms is a finite 0 or more, not {self.max_wait_ms}.")


class PredictRequest(BaseModel):
    """A hosted run's name and its inputs: texts, lists of words (taggers) or rows of fields
    (templates with several inputs)."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="a hosted run's name (see /runs)")
    inputs: list[Item] = Field(min_length=1, description="the inputs, answered in order")
    probabilities: bool = Field(False, description="also return the class probabilities")

    @model_validator(mode="before")
    @classmethod
    def _former_name(cls, body: Any) -> Any:
        """``task``, the field's former name, is still taken (with a warning in the log)."""
        if isinstance(body, dict) and "task" in body and "run" not in body:
            _warn_once("the request field `task` is now `run`; send `run` instead")
            body = {("run" if key == "task" else key): value for key, value in body.items()}
        return body


class PredictResponse(BaseModel):
    """The answers, in the order of the inputs."""

    run: str
    predictions: list[Any]
    probabilities: list[Any] | None = None
    empty: list[str | None] | None = Field(
        None,
        description="a generator's: for each answer, why it is empty (end: the end token "
        "came first, stop: a stop string came before any text, whitespace: only whitespace "
        "was written), null where it holds text",
    )
    warning: str | None = Field(
        None, description="how many answers are empty, why, and the fix; null when none is"
    )


class RunInfo(BaseModel):
    """What a hosted run is."""

    run: str
    template: str
    head: str
    classes: list[str] | None


class Health(BaseModel):
    """The server's state and what it has done."""

    status: str
    runs: int
    requests: int
    batches: int


@dataclass
class _Waiting:
    rows: list[Row]
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """Collects the rows of concurrent requests into shared batches, run one at a time on a
    worker thread (the event loop stays free to take requests meanwhile)."""

    def __init__(self, host: Host, limits: Limits) -> None:
        self.host, self.limits = host, limits
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptkit-batch")
        self.requests = self.batches = 0

    async def answer(self, rows: list[Row]) -> list[Answer]:
        """The answers to one request's rows, computed in a batch with others'."""
        waiting = _Waiting(rows)
        await self.queue.put(waiting)
        return await waiting.done

    async def run(self) -> None:
        """Form and run batches until cancelled."""
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0].rows)
            deadline = time.monotonic() + self.limits.max_wait_ms / 1000
            while size < self.limits.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    waiting = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
                batch.append(waiting)
                size += len(waiting.rows)
            await self._run(batch)

    async def _run(self, batch: Sequence[_Waiting]) -> None:
        rows = [row for waiting in batch for row in waiting.rows]
        loop = asyncio.get_running_loop()
        try:
            answers = await loop.run_in_executor(
                self.worker, self.host.answer, rows, self.limits.max_batch
            )
        except Exception as err:  # one request's failure must not fail the others'
            if len(batch) > 1:
                for waiting in batch:
                    await self._run([waiting])
                return
            log.exception("a batch failed")
            _settle(batch[0].done, error=err)
            return
        self.batches += 1
        start = 0
        for waiting in batch:
            self.requests += 1
            _settle(waiting.done, answers[start : start + len(waiting.rows)])
            start += len(waiting.rows)

    def close(self) -> None:
        """Stop the worker thread (after the batch it runs)."""
        self.worker.shutdown(wait=True)


def _settle(done: asyncio.Future, result: Any = None, error: Exception | None = None) -> None:
    if done.cancelled():  # the client went away
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413, whether it declares
    its length or comes in chunks (it is read, up to the limit, before the app sees it)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = await self._read(scope, receive)
        if message is None:
            detail = {"detail": f"the request body is over {self.max_bytes} bytes."}
            await JSONResponse(detail, status_code=413)(scope, receive, send)
            return
        replay = [message]

        async def replayed() -> Any:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _read(self, scope: Any, receive: Any) -> dict[str, Any] | None:
        """The whole body as one message (or the disconnect that cut it short); None when
        it is over the limit."""
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return None
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return {"type": "http.request", "body": bytes(body), "more_body": False}


def create_app(host: Host, limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``host``."""
    limits = limits or Limits()
    batcher = Batcher(host, limits)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        running = asyncio.create_task(batcher.run())
        try:
            yield  # uvicorn lets in-flight requests finish before this returns
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            batcher.close()

    app = FastAPI(
        title="promptkit",
        summary="Many trained prompts on one frozen backbone.",
        lifespan=lifespan,
    )

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.get("/health")
    async def health() -> Health:
        """Whether the server is up, and how many requests and batches it has run."""
        return Health(
            status="ok", runs=len(host.runs), requests=batcher.requests, batches=batcher.batches
        )

    @app.get("/runs")
    async def runs() -> list[RunInfo]:
        """The hosted runs: template, head and classes (None for a generator)."""
        return [RunInfo(**host.describe(name)) for name in host.runs]

    @app.get("/tasks", deprecated=True)
    async def tasks() -> list[RunInfo]:
        """The former name of /runs."""
        _warn_once("GET /tasks is now GET /runs")
        return await runs()

    @app.post("/predict", responses={400: {}, 404: {}, 413: {}, 422: {}})
    async def predict(request: PredictRequest) -> PredictResponse:
        """Answer a run's inputs: labels, tags per word, or written texts."""
        rows = _bound(host, request, limits)
        answers = await batcher.answer(rows)
        writes = not host.models[request.run].task.has_classes
        return PredictResponse(
            run=request.run,
            predictions=[a.value for a in answers],
            probabilities=[a.probabilities for a in answers] if request.probabilities else None,
            empty=[a.empty for a in answers] if writes else None,
            warning=empty_report([a.empty for a in answers]) if writes else None,
        )

    return app


def _bound(host: Host, request: PredictRequest, limits: Limits) -> list[Row]:
    """The request's rows, or the 4xx that says what is wrong with it."""
    if request.run not in host.models:
        raise HTTPException(404, f"no run is named {request.run!r}; the runs are {host.runs}.")
    if len(request.inputs) > limits.max_inputs:
        raise HTTPException(
            413, f"{len(request.inputs)} inputs are more than the {limits.max_inputs} allowed."
        )
    for number, item in enumerate(request.inputs, 1):
        if _chars(item) > limits.max_chars:
            raise HTTPException(
                413, f"input {number} is over the {limits.max_chars} characters allowed."
            )
    has_classes = host.models[request.run].task.has_classes
    if request.probabilities and not has_classes:
        raise HTTPException(400, f"run {request.run!r} writes text: it has no probabilities.")
    try:
        return host.bind(request.inputs, request.run)
    except PromptkitError as err:
        raise HTTPException(400, str(err)) from None


def _chars(item: Item) -> int:
    values = item.values() if isinstance(item, dict) else [item]
    return sum(len(v) if isinstance(v, str) else sum(map(len, v)) for v in values)


def serve(
    host: Host, address: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None
) -> None:
    """Serve ``host`` over HTTP until interrupted (SIGINT or SIGTERM end it gracefully:
    requests in flight are answered first)."""
    import uvicorn

    uvicorn.run(
        create_app(host, limits),
        host=address,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=30,
    )
