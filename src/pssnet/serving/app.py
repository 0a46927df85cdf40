"""The HTTP layer of ``pssnet serve``: ``POST /predict``, ``GET /status``, ``GET /metrics``
(Prometheus text) and ``GET /healthz``.

``POST /predict`` is a bare ASGI handler in front of the FastAPI app, which serves the rest and
runs start-up and shutdown. Why: on one CPU core the server's Python work per request competes
with inference, and FastAPI's middleware stack, dependency resolution and thread-pool hop cost
more CPU per request than serving the smallest subnet's share of a batch (the measured figures
are in the README's Serving section). The bare handler does only what the endpoint needs.

Hostile clients: a body must arrive within ``--body-timeout-s`` (else 408), and the bodies being
received at once hold at most ``--max-buffered-mb`` (beyond it the oldest unfinished upload is
dropped with 503). Where a body is decoded is decided by its decoded size, read from its header
(a 48 KB PNG can hold 4096 x 4096 pixels): up to ``INLINE_DECODE_PIXELS`` on the event loop,
larger ones in at most ``DECODE_THREADS`` threads at once, so that the loop keeps answering.
Every refusal (4xx) and server error (5xx) of any endpoint is counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, MutableMapping, Optional, Sequence

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from .batcher import Closed
from .controller import Need
from .metrics import ServingMetrics
from .preprocess import RequestError, top_classes
from .service import ServingService

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
INLINE_DECODE_PIXELS = 128 * 128  # decoded sizes (pixels or array values) decoded on the event loop
DECODE_THREADS = 2  # larger ones: threads at once (each can hold a 4096 x 4096 image)
NEED_CACHE = 1024  # distinct (X-Deadline-Ms, X-Budget) pairs whose parse is kept
SWEEP_S = 0.25  # how often uploads over the body timeout are looked for
SHUTTING_DOWN = "the server is shutting down; retry on another replica"
# Refusals sent before the whole body was read: the connection is closed, not drained.
CLOSE_AFTER = frozenset({408, 413, 503})
log = logging.getLogger("pssnet.serve")


class ServingApp:
    """The ASGI app around ``service``: starts it (calibration, worker) on start-up, drains it on
    shutdown; :meth:`drain` drops unfinished uploads at once (called when a shutdown begins)."""

    def __init__(self, service: ServingService) -> None:
        self.service = service
        self.api = _control_api(service)
        self.predict = PredictEndpoint(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
        elif scope["path"] == "/predict":
            await self.predict(scope, receive, send)
        else:
            await self.api(scope, receive, _counting(send, self.service.metrics))

    def drain(self) -> None:
        self.predict.drain()


def create_app(service: ServingService) -> ServingApp:
    """The ASGI app of ``pssnet serve`` (see :class:`ServingApp`)."""
    return ServingApp(service)


def _counting(send: Send, metrics: ServingMetrics) -> Send:
    """``send`` that counts the status of the response (404, 405, 500 of the FastAPI routes)."""
    async def counted(message: Message) -> None:
        if message["type"] == "http.response.start":
            metrics.record_status(message["status"])
        await send(message)

    return counted


def _control_api(service: ServingService) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        yield
        await run_in_threadpool(service.stop)

    api = FastAPI(title="pssnet serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @api.get("/status")
    async def status() -> Any:
        return service.status()

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok", "subnet": service.controller.current}

    return api


class ClientGone(Exception):
    """The client closed the connection before it had sent the whole body."""


class BodyBuffer:
    """The request bodies being received, used on the event loop only: what they hold, within
    ``limit`` bytes at once, and how long they take, within ``timeout_s``. A chunk that does not
    fit drops the oldest unfinished upload (a slow upload is the oldest); :meth:`expire`, called
    periodically, drops the uploads older than the timeout (a sweep rather than a timer per
    request, which would cost every request). A dropped upload's task is cancelled with a status
    and a reason, which its handler answers."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.used = 0
        self._held: dict[asyncio.Task, int] = {}
        self._reading: dict[asyncio.Task, float] = {}  # unfinished uploads and their start, oldest first
        self._dropped: dict[asyncio.Task, tuple[int, str]] = {}

    def start(self, task: asyncio.Task, now: float) -> None:
        self._held[task] = 0
        self._reading[task] = now

    def add(self, task: asyncio.Task, size: int) -> None:
        """Hold ``size`` more bytes for ``task``, dropping older unfinished uploads as needed; 503 if
        this body alone is over the limit."""
        while self.used + size > self.limit:
            victim = next((t for t in self._reading if t is not task), None)
            if victim is None:
                raise RequestError(503, f"request bodies are over the server's limit of {self.limit} bytes held "
                                        "at once (--max-buffered-mb); retry shortly")
            self.drop(victim, 503, "the server holds too many unfinished uploads at once (--max-buffered-mb); "
                                   "this one, the oldest, was dropped: retry")
        self.used += size
        self._held[task] += size

    def expire(self, now: float) -> None:
        """Drop the uploads that have taken longer than the timeout (408)."""
        for task, started in list(self._reading.items()):
            if now - started < self.timeout_s:
                break
            self.drop(task, 408, f"the body did not arrive within {self.timeout_s:g} s (--body-timeout-s); "
                                 "send it in one go")

    def drop(self, task: asyncio.Task, status: int, reason: str) -> None:
        """End an unfinished upload: its bytes are freed now, its task cancelled with ``reason``."""
        self._reading.pop(task, None)
        self.used -= self._held.pop(task, 0)
        self._dropped[task] = (status, reason)
        task.cancel()

    def drop_all(self, status: int, reason: str) -> None:
        for task in list(self._reading):
            self.drop(task, status, reason)

    def read(self, task: asyncio.Task) -> None:
        """The body of ``task`` is complete: it is no longer dropped (its bytes stay held until :meth:`release`)."""
        self._reading.pop(task, None)

    def release(self, task: asyncio.Task) -> None:
        self._reading.pop(task, None)
        self.used -= self._held.pop(task, 0)

    def reason(self, task: asyncio.Task) -> Optional[tuple[int, str]]:
        """Why ``task`` was dropped (None: it was not; then its cancellation is not ours)."""
        return self._dropped.pop(task, None)


class PredictEndpoint:
    """``POST /predict``: read the headers and body, decode, queue for the inference worker, answer JSON."""

    def __init__(self, service: ServingService) -> None:
        self.service = service
        self.bodies = BodyBuffer(int(service.config.max_buffered_mb * 2**20), service.config.body_timeout_s)
        self.draining = False
        self._swept_loop: Optional[asyncio.AbstractEventLoop] = None  # the loop the sweep runs on
        self._decode_slots = asyncio.Semaphore(DECODE_THREADS)
        self._needs: dict[tuple[Optional[bytes], Optional[bytes]], Need] = {}

    def drain(self) -> None:
        """A shutdown begins: drop the unfinished uploads now (503) and refuse new ones; the
        requests already read are still answered."""
        self.draining = True
        self.bodies.drop_all(503, SHUTTING_DOWN)
        self.service.drain()

    def _sweep(self) -> None:
        """Drop the uploads over the body timeout, and come back in ``SWEEP_S``."""
        self.bodies.expire(self.service.clock())
        asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._handle(scope, receive, send)
        except Exception as exc:  # a bug: one line in the log and a counted 500, never a traceback per request
            log.error("pssnet serve: internal error in /predict: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(Exception):  # the response may have started
                await self._answer(send, 500, {"error": f"internal error: {type(exc).__name__}"})

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        arrival = service.clock()
        if scope["method"] != "POST":
            await self._answer(send, 405, {"error": "use POST /predict"}, [(b"allow", b"POST")])
            return
        headers = dict(scope["headers"])
        task = asyncio.current_task()
        try:
            need = self._need(headers)
            body = await self._read_body(receive, headers.get(b"content-length"), task)
            x = await self._decode(body, headers.get(b"content-type", b"").decode("latin-1"))
            job = service.submit(x, arrival, need)
        except RequestError as error:
            await self._answer(send, error.status, {"error": error.message})
            return
        except Closed:
            await self._answer(send, 503, {"error": SHUTTING_DOWN})
            return
        except ClientGone:  # nobody to answer, and not a refusal
            return
        finally:
            self.bodies.release(task)
        try:
            result = await asyncio.wrap_future(job.future)
        except Exception as exc:  # a failed batch fails its requests, not the server
            await self._answer(send, 500, {"error": f"inference failed: {type(exc).__name__}: {exc}"})
            return
        service.metrics.record_request(1e3 * (service.clock() - arrival), need.deadline_ms if need else None)
        await self._answer(send, 200, {
            "top": top_classes(result.probabilities, service.preprocessing.class_names, service.config.top_k),
            "subnet": result.subnet, "queue_ms": result.queue_ms, "inference_ms": result.inference_ms})

    def _need(self, headers: dict[bytes, bytes]) -> Optional[Need]:
        """The request's own :class:`Need` from ``X-Deadline-Ms`` and ``X-Budget`` (None without
        either); a bad header is a 400 naming it. Each distinct pair is parsed once."""
        pair = (headers.get(b"x-deadline-ms"), headers.get(b"x-budget"))
        if pair == (None, None):
            return None
        need = self._needs.get(pair)
        if need is None:
            need = self.service.need(*(None if v is None else v.decode("latin-1") for v in pair))
            if len(self._needs) >= NEED_CACHE:
                self._needs.clear()
            self._needs[pair] = need
        return need

    async def _read_body(self, receive: Receive, declared: Optional[bytes], task: asyncio.Task) -> bytes:
        """The body: 413 as soon as it is known to exceed the size limit, 408 if it takes longer
        than the body timeout, 503 if it is dropped (too many bodies at once, or shutting down)."""
        limit = self.service.preprocessing.max_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"body of {declared.decode()} bytes is over the limit of {limit}")
        if self.draining:
            raise RequestError(503, SHUTTING_DOWN)
        loop = asyncio.get_running_loop()
        if self._swept_loop is not loop:
            self._swept_loop = loop
            loop.call_later(SWEEP_S, self._sweep)
        self.bodies.start(task, self.service.clock())
        try:
            body = await self._receive_all(receive, limit, task)
        except asyncio.CancelledError:
            dropped = self.bodies.reason(task)
            if dropped is None:
                raise
            task.uncancel()
            raise RequestError(*dropped) from None
        self.bodies.read(task)
        return body

    async def _receive_all(self, receive: Receive, limit: int, task: asyncio.Task) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body is over the limit of {limit} bytes")
            self.bodies.add(task, len(chunk))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _decode(self, body: bytes, content_type: str) -> Any:
        """The model input: the header is read here; small inputs are decoded on the event loop,
        large ones (by decoded size) in a thread, a few at a time."""
        decoding = self.service.preprocessing.open(body, content_type)
        if decoding.pixels <= INLINE_DECODE_PIXELS:
            return decoding.finish()
        async with self._decode_slots:
            return await run_in_threadpool(decoding.finish)

    async def _answer(self, send: Send, status: int, payload: Any,
                      extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Send a JSON response (never NaN: ``allow_nan=False``) and count it if it is an error."""
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   *extra_headers]
        if status in CLOSE_AFTER:
            headers.append((b"connection", b"close"))
        if status == 503:
            headers.append((b"retry-after", b"1"))
        if status >= 400:
            self.service.metrics.record_status(status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
