"""The HTTP layer of ``pssnet serve`` (FastAPI): ``POST /predict``, ``GET /status``,
``GET /metrics`` (Prometheus text) and ``GET /healthz``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from .batcher import Closed
from .preprocess import RequestError, top_classes
from .service import ServingService


def create_app(service: ServingService) -> FastAPI:
    """The app around ``service``: starts it (calibration, worker) on start-up, drains it on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(service.start)
        yield
        await run_in_threadpool(service.stop)

    app = FastAPI(title="pssnet serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def refuse(error: RequestError) -> JSONResponse:
        service.metrics.rejected.labels(str(error.status)).inc()
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        arrival = service.clock()
        try:
            body = await _read_body(request, service.preprocessing.max_bytes)
            x = await run_in_threadpool(service.preprocessing.decode, body, request.headers.get("content-type"))
            job = service.submit(x, arrival)
        except RequestError as error:
            return refuse(error)
        except Closed:
            return JSONResponse({"error": "the server is shutting down"}, status_code=503)
        result = await asyncio.wrap_future(job.future)
        service.metrics.record_request(1e3 * (service.clock() - arrival))
        return {"top": top_classes(result.probabilities, service.preprocessing.class_names, service.config.top_k),
                "subnet": result.subnet, "queue_ms": result.queue_ms, "inference_ms": result.inference_ms}

    @app.get("/status")
    async def status() -> Any:
        return service.status()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok", "subnet": service.controller.current}

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
