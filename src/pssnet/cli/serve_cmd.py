"""``pssnet serve``: an HTTP server that keeps a latency target by switching subnets."""

from __future__ import annotations

import argparse
import signal

from ..errors import UserError
from .dataclass_args import add_config_flags, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..serving.config import ServeConfig

    p = subparsers.add_parser(
        "serve", help="serve a bundle over HTTP, switching subnets to keep a latency target",
        description="Serve BUNDLE over HTTP with dynamic batching. Before each batch the controller picks the most "
                    "accurate retained subnet predicted to keep the --quantile of request latencies (arrival to "
                    "response) within --slo-ms under the load and interference of the moment. Endpoints: POST "
                    "/predict (a PNG/JPEG image or .npy array), GET /status, GET /metrics (Prometheus), GET /healthz. "
                    "SIGTERM answers the requests in flight, then exits 0. Needs pip install 'pssnet[serve]'.")
    add_config_flags(p, ServeConfig)
    p.set_defaults(func=run)


def _serving_modules():
    try:
        import uvicorn

        from ..serving.app import create_app
    except ImportError as exc:
        raise UserError(f"pssnet serve needs the serve extra ({exc.name} is missing): "
                        "pip install 'pssnet[serve]'") from None
    return uvicorn, create_app


def run(args: argparse.Namespace) -> int:
    from ..serving.config import ServeConfig

    config: ServeConfig = config_from_args(ServeConfig, args)
    uvicorn, create_app = _serving_modules()
    from ..serving.service import ServingService  # after the check: it needs the extra too
    service = ServingService(config)
    slo = config.slo
    mode = f"fixed {service.controller.fixed}" if config.fixed else "adaptive"
    print(f"pssnet serve: {len(service.adaptive.subnets)} subnets, {mode}, target p{100 * slo.quantile:g} <= "
          f"{slo.target_ms:g} ms, input {service.preprocessing.describe()}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=config.host, port=config.port, log_level="warning",
                                           timeout_graceful_shutdown=30, lifespan="on"))
    # uvicorn re-raises the SIGTERM it handled once it has drained; this handler turns that into exit 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        print(f"listening on http://{config.host}:{config.port} (calibrating the subnets first)", flush=True)
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise UserError(f"could not start serving on {config.host}:{config.port} (port in use?); pick another --port")
    print("pssnet serve: drained and stopped", flush=True)
    return 0
