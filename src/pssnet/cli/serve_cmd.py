"""``pssnet serve``: an HTTP server that keeps a latency target by switching subnets."""

from __future__ import annotations

import argparse
import signal

from ..errors import UserError
from .args import float_in, int_in, non_negative_float, positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a bundle over HTTP, switching subnets to keep a latency target",
        description="Serve BUNDLE over HTTP with dynamic batching. Before each batch the controller picks the most "
                    "accurate retained subnet predicted to keep the --quantile of request latencies (arrival to "
                    "response) within --slo-ms under the load and interference of the moment. Endpoints: POST "
                    "/predict (a PNG/JPEG image or .npy array), GET /status, GET /metrics (Prometheus), GET /healthz. "
                    "SIGTERM answers the requests in flight, then exits 0. Needs pip install 'pssnet[serve]'.")
    p.add_argument("bundle", metavar="BUNDLE", help="adaptive.pt written by pssnet eval")
    p.add_argument("--slo-ms", type=positive_float, required=True, help="latency target in milliseconds")
    p.add_argument("--quantile", type=float_in(0.0, 1.0, low_open=True, what="a number in (0, 1]"), default=0.95, help="share of requests within the target (default 0.95)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_in(0, 65535, what="a port number from 0 to 65535"), default=8000, help="port (default 8000)")
    p.add_argument("--max-batch", type=positive_int, default=8, help="most requests per inference batch (default 8)")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=5.0,
                   help="longest a request waits for others to fill its batch (default 5)")
    p.add_argument("--fixed", metavar="largest|smallest|KEY", help="pin one subnet (the baseline) instead of adapting")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads for inference (default: torch's)")
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
    from ..serving.controller import SloConfig
    from ..serving.service import ServeConfig, ServingService

    uvicorn, create_app = _serving_modules()
    slo = SloConfig(target_ms=args.slo_ms, quantile=args.quantile, max_batch=args.max_batch,
                    max_wait_ms=args.max_wait_ms)
    config = ServeConfig(args.bundle, slo, args.host, args.port, args.fixed, args.threads)
    service = ServingService(config)
    mode = f"fixed {service.controller.fixed}" if args.fixed else "adaptive"
    print(f"pssnet serve: {len(service.adaptive.subnets)} subnets, {mode}, target p{100 * slo.quantile:g} <= "
          f"{slo.target_ms:g} ms, input {service.preprocessing.describe()}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=30, lifespan="on"))
    # uvicorn re-raises the SIGTERM it handled once it has drained; this handler turns that into exit 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        print(f"listening on http://{args.host}:{args.port} (calibrating the subnets first)", flush=True)
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise UserError(f"could not start serving on {args.host}:{args.port} (port in use?); pick another --port")
    print("pssnet serve: drained and stopped", flush=True)
    return 0
