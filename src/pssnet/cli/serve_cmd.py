"""``pssnet serve``: an HTTP server that keeps a latency target by switching subnets."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from typing import Any

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
                    "A request may carry its own X-Deadline-Ms (e.g. 30) or X-Budget (e.g. flops=15). SIGTERM drops "
                    "unfinished uploads, answers the requests already read, then exits 0. Needs pip install "
                    "'pssnet[serve]'.")
    add_config_flags(p, ServeConfig)
    p.set_defaults(func=run)


def _serving_modules():
    try:
        import uvicorn

        from ..serving import app, server
    except ImportError as exc:
        raise UserError(f"pssnet serve needs the serve extra ({exc.name} is missing): "
                        "pip install 'pssnet[serve]'") from None
    return uvicorn, app, server


def run(args: argparse.Namespace) -> int:
    from ..serving.config import ServeConfig

    config: ServeConfig = config_from_args(ServeConfig, args)
    uvicorn, app_module, server_module = _serving_modules()
    from ..serving.service import ServingService  # after the check: it needs the extra too

    service = ServingService(config)  # reads and checks the bundle; calibration comes once serving starts
    # Bound before the subnets are calibrated: a port in use is one line at once.
    sock = server_module.bind_socket(config.host, config.port)
    try:
        return _serve(service, sock, uvicorn, app_module, server_module)
    finally:
        sock.close()


def _serve(service: Any, sock: socket.socket, uvicorn: Any, app_module: Any, server_module: Any) -> int:
    config = service.config
    slo = config.slo
    mode = f"fixed {service.controller.fixed}" if config.fixed else "adaptive"
    print(f"pssnet serve: {len(service.adaptive.subnets)} subnets, {mode}, target p{100 * slo.quantile:g} <= "
          f"{slo.target_ms:g} ms, input {service.preprocessing.describe()}", flush=True)
    if not server_module.loopback(sock):
        print(f"note: --host {config.host} is reachable from other machines; pssnet serve has no authentication "
              "or TLS, so put it behind a proxy you trust", file=sys.stderr, flush=True)
    app = app_module.create_app(service)
    server = server_module.DrainingServer(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30,
                                                         lifespan="on"), app)
    # uvicorn re-raises the SIGTERM it handled once it has drained; this handler turns that into exit 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        host = f"[{config.host}]" if ":" in config.host else config.host
        print(f"listening on http://{host}:{sock.getsockname()[1]} (calibrating the subnets first)", flush=True)
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise UserError(f"could not start serving on {config.host}:{config.port}; see the lines above")
    print("pssnet serve: drained and stopped", flush=True)
    return 0
