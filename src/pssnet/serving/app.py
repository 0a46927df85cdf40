"""The HTTP layer of ``pssnet serve``: ``POST /predict``, ``GET /status``, ``GET /metrics``
(Prometheus text) and ``GET /healthz``.

``POST /predict`` is a bare ASGI handler in front of the FastAPI app, which serves the rest and
runs start-up and shutdown. Why: on one CPU core the server's Python work per request competes
with inference, and FastAPI's middleware stack, dependency resolution and thread-pool hop cost
more CPU per request than serving the smallest subnet's share of a batch (the measured figures
are in the README's Serving section). The bare handler does only what the endpoint needs;
bodies up to ``INLINE_DECODE_BYTES`` are decoded on the event loop, larger ones (real photos) in
a thread so that the loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator, Awaitable, Callable, MutableMapping, Optional, Sequence

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from .batcher import Closed
from .preprocess import RequestError, top_classes
from .service import ServingService

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
INLINE_DECODE_BYTES = 64 * 1024


def create_app(service: ServingService) -> ASGIApp:
    """The ASGI app around ``service``: starts it (calibration, worker) on start-up, drains it on shutdown."""
    api = _control_api(service)
    predict = PredictEndpoint(service)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict":
            await predict(scope, receive, send)
        else:
            await api(scope, receive, send)

    return app


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


class PredictEndpoint:
    """``POST /predict``: read and decode the body, queue it for the inference worker, answer JSON."""

    def __init__(self, service: ServingService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service = self.service
        arrival = service.clock()
        if scope["method"] != "POST":
            await _send_json(send, 405, {"error": "use POST /predict"}, [(b"allow", b"POST")])
            return
        headers = dict(scope["headers"])
        try:
            body = await _read_body(receive, headers.get(b"content-length"), service.preprocessing.max_bytes)
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            if len(body) <= INLINE_DECODE_BYTES:
                x = service.preprocessing.decode(body, content_type)
            else:
                x = await run_in_threadpool(service.preprocessing.decode, body, content_type)
            job = service.submit(x, arrival)
        except RequestError as error:
            service.metrics.rejected.labels(str(error.status)).inc()
            await _send_json(send, error.status, {"error": error.message})
            return
        except Closed:
            await _send_json(send, 503, {"error": "the server is shutting down"})
            return
        except ClientGone:  # nobody to answer, and not a refusal
            return
        try:
            result = await asyncio.wrap_future(job.future)
        except Exception as exc:  # a failed batch fails its requests, not the server
            await _send_json(send, 500, {"error": f"inference failed: {type(exc).__name__}: {exc}"})
            return
        service.metrics.record_request(1e3 * (service.clock() - arrival))
        await _send_json(send, 200, {
            "top": top_classes(result.probabilities, service.preprocessing.class_names, service.config.top_k),
            "subnet": result.subnet, "queue_ms": result.queue_ms, "inference_ms": result.inference_ms})


async def _read_body(receive: Receive, declared: Optional[bytes], limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared.decode()} bytes is over the limit of {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(send: Send, status: int, payload: Any,
                     extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
