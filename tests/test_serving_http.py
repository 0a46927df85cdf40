"""``pssnet serve`` through real HTTP on 127.0.0.1: a server subprocess on a tiny bundle."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from pssnet.data.datasets import normalisation
from pssnet.deploy import AdaptiveNet, make_bundle, save_bundle
from pssnet.evaluation import EvalConfig, evaluate_run
from test_deploy_fixtures import IMAGE_SIZE, tiny_data, tiny_run

import fastapi  # noqa: F401  (the serve extra, installed by make test: its absence must fail, not skip)
import PIL.Image

SRC = Path(__file__).resolve().parents[1] / "src"
CONFIG = EvalConfig(top_k=2, calib_batches=2, holdout=40, batch_size=16, progress=False)


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory):
    """A tiny evaluated bundle whose data spec names Fashion-MNIST (its normalisation)."""
    run = tiny_run(data="fashion-mnist-mini")
    result, evaluator = evaluate_run(run, tiny_data(), CONFIG)
    path = tmp_path_factory.mktemp("serve") / "adaptive.pt"
    save_bundle(make_bundle(run, result, evaluator.stats, IMAGE_SIZE), path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m pssnet serve`` in a subprocess, with helpers for HTTP calls."""

    def __init__(self, bundle: Path, *args: str) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "pssnet", "serve", str(bundle), "--port", str(self.port),
                                      "--threads", "1", "--max-batch", "4", "--max-wait-ms", "2", *args],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stdout.read()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("server did not come up within 60 s")

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                headers: dict[str, str] | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method,
                                     headers=headers or {})
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.headers.get("content-type", ""), response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("content-type", ""), error.read()

    def get(self, path: str):
        return self.request("GET", path)

    def predict(self, body: bytes, content_type: str | None, headers: dict[str, str] | None = None):
        status, ctype, data = self.request("POST", "/predict", body, content_type, headers)
        return status, json.loads(data)

    def metrics(self) -> str:
        return self.get("/metrics")[2].decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def server(bundle_path):
    srv = Server(bundle_path, "--slo-ms", "200")
    yield srv
    srv.stop()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))
    return buffer.getvalue()


def npy_with_header(header: dict, data: bytes = b"") -> bytes:
    """A .npy body with a hand-written header (numpy will not write the hostile ones)."""
    text = repr(header).encode()
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def reference_probabilities(bundle_path: Path, key: str, x: torch.Tensor) -> torch.Tensor:
    """AdaptiveNet's own output for one input on the subnet that served it (independent of the server)."""
    net = AdaptiveNet.load(bundle_path)
    net.switch_to(net.find(key))
    with torch.no_grad():
        return torch.softmax(net(x[None]), dim=1)[0]


def served_probabilities(answer: dict) -> dict[str, float]:
    return {entry["class"]: entry["probability"] for entry in answer["top"]}


def test_npy_prediction_equals_adaptive_net_on_the_serving_subnet(server, bundle_path):
    x = torch.randn(1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    status, answer = server.predict(npy_bytes(x.numpy()), "application/x-npy")
    assert status == 200
    assert set(answer) == {"top", "subnet", "queue_ms", "inference_ms"}
    assert answer["queue_ms"] >= 0 and answer["inference_ms"] > 0
    expected = reference_probabilities(bundle_path, answer["subnet"], x)
    served = served_probabilities(answer)
    assert len(served) == 4  # 4 classes, names are indices (Fashion-MNIST's 10 names do not fit)
    for cls, p in served.items():
        assert p == pytest.approx(float(expected[int(cls)]), abs=1e-5)
    probabilities = [e["probability"] for e in answer["top"]]
    assert probabilities == sorted(probabilities, reverse=True)


def test_png_is_normalised_like_the_training_data(server, bundle_path):
    pixels = np.random.default_rng(2).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    status, answer = server.predict(png_bytes(pixels), "image/png")
    assert status == 200
    (mean,), (std,) = normalisation("fashion-mnist")
    x = (torch.from_numpy(pixels).float()[None] / 255 - mean) / std
    expected = reference_probabilities(bundle_path, answer["subnet"], x)
    for cls, p in served_probabilities(answer).items():
        assert p == pytest.approx(float(expected[int(cls)]), abs=1e-5)
    # the same pixels as uint8 .npy, and sniffed without a content type, give the same answer
    status, again = server.predict(npy_bytes(pixels), "application/octet-stream")
    assert status == 200 and served_probabilities(again) == pytest.approx(served_probabilities(answer), abs=1e-6)


def metric_value(text: str, sample: str) -> float:
    """The value of one sample (``name`` or ``name{labels}``) of a Prometheus text; 0 if absent."""
    return next((float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0] == sample), 0.0)


def test_concurrent_requests_are_batched_and_all_answered(bundle_path):
    # A wait long enough that a batch fills however the client threads are scheduled: the batching
    # is then certain, not a matter of timing.
    server = Server(bundle_path, "--slo-ms", "5000", "--max-wait-ms", "1000")
    try:
        before = server.get("/metrics")[2].decode()
        x = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        results = []

        def call():
            results.append(server.predict(npy_bytes(x), "application/x-npy"))

        threads = [threading.Thread(target=call) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        after = server.get("/metrics")[2].decode()
    finally:
        server.stop()
    assert [status for status, _ in results] == [200] * 12
    requests, batches, singles, within_max = (
        metric_value(after, name) - metric_value(before, name)
        for name in ("pssnet_batch_size_sum", "pssnet_batch_size_count", 'pssnet_batch_size_bucket{le="1.0"}',
                     'pssnet_batch_size_bucket{le="4.0"}'))
    assert requests == 12 and within_max == batches  # every request in a batch of at most --max-batch 4
    assert singles < batches and batches < 12  # at least one batch held more than one request
    # requests of one batch share its forward pass: some answers report the same inference time
    inference = [answer["inference_ms"] for _, answer in results]
    assert len(set(inference)) < len(inference)


def test_fortran_order_big_endian_and_large_bodies_give_the_same_answer(server, bundle_path):
    x = torch.randn(1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(5))
    status, answer = server.predict(npy_bytes(x.numpy()), "application/x-npy")
    assert status == 200
    for variant in (np.asfortranarray(x.numpy()), x.numpy().astype(">f4")):
        status, again = server.predict(npy_bytes(variant), "application/x-npy")
        assert status == 200 and served_probabilities(again) == pytest.approx(served_probabilities(answer), abs=1e-6)
    # an image over INLINE_DECODE_PIXELS (by its header) is decoded off the event loop, to the same input as in-process
    from pssnet.serving.app import INLINE_DECODE_PIXELS
    from pssnet.serving.preprocess import preprocessing_for

    pixels = np.random.default_rng(4).integers(0, 256, (400, 400), dtype=np.uint8)
    body = png_bytes(pixels)
    assert pixels.size > INLINE_DECODE_PIXELS
    status, answer = server.predict(body, "image/png")
    assert status == 200
    info = AdaptiveNet.load(bundle_path).info
    x = preprocessing_for(info, info.get("preprocessing")).decode(body, "image/png")
    expected = reference_probabilities(bundle_path, answer["subnet"], x)
    for cls, p in served_probabilities(answer).items():
        assert p == pytest.approx(float(expected[int(cls)]), abs=1e-5)


def test_predict_takes_post_only(server):
    status, ctype, body = server.get("/predict")
    assert status == 405 and ctype == "application/json" and "POST" in json.loads(body)["error"]
    status, _, _ = server.get("/no-such-endpoint")
    assert status == 404


def test_every_refusal_and_server_error_is_counted(server):
    before = server.metrics()
    assert server.get("/predict")[0] == 405
    assert server.request("POST", "/metrics", b"x")[0] == 405  # FastAPI's own routes are counted too
    assert server.get("/no-such-endpoint")[0] == 404
    after = server.metrics()
    for status, count in (("405", 2), ("404", 1)):
        sample = f'pssnet_rejected_requests_total{{status="{status}"}}'
        assert metric_value(after, sample) - metric_value(before, sample) == count


def test_non_finite_outputs_are_a_counted_500_never_a_200_with_nan(bundle_path):
    """In process: the ASGI app driven by hand, a model whose outputs turn NaN for one input."""
    import asyncio

    from pssnet.serving.app import create_app
    from pssnet.serving.config import ServeConfig, SloConfig
    from pssnet.serving.service import ServingService

    service = ServingService(ServeConfig(bundle_path, SloConfig(target_ms=1000, max_batch=2, max_wait_ms=1),
                                         calibration_repeats=1))
    # NaN rows wherever the input's first value is 7: one request of a batch of two fails, not the other
    service.adaptive.net.register_forward_hook(
        lambda module, inputs, out: torch.where(inputs[0][:, :1, :1, :1].flatten()[:, None] == 7, torch.nan, out))
    app = create_app(service)
    service.start()
    try:
        async def post(x: np.ndarray) -> tuple[int, dict]:
            messages = iter([{"type": "http.request", "body": npy_bytes(x), "more_body": False}])
            sent = []

            async def receive():
                return next(messages)

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": "/predict",
                     "headers": [(b"content-type", b"application/x-npy")]}
            await app(scope, receive, send)
            return sent[0]["status"], json.loads(sent[1]["body"])

        async def both():
            bad = np.full((IMAGE_SIZE, IMAGE_SIZE), 7.0, dtype=np.float32)
            return await asyncio.gather(post(bad), post(np.zeros_like(bad)))

        (bad_status, bad_answer), (good_status, good_answer) = asyncio.run(both())
    finally:
        service.stop()
    assert bad_status == 500 and "non-finite" in bad_answer["error"]
    assert good_status == 200 and all(math.isfinite(e["probability"]) for e in good_answer["top"])
    text = service.metrics.exposition().decode()
    assert metric_value(text, 'pssnet_server_errors_total{status="500"}') == 1


def test_the_npy_reader_agrees_with_numpy_and_never_unpickles():
    from pssnet.serving.preprocess import RequestError, _load_npy

    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal((3, 5)).astype(np.float32), np.asfortranarray(rng.standard_normal((4, 2, 3))),
              rng.integers(0, 256, (7, 6, 3), dtype=np.uint8), np.arange(5, dtype=">f8"), np.float32(2.5),
              np.zeros((0, 3), dtype=np.float32)]
    for array in arrays:
        got, expected = _load_npy(npy_bytes(array)), np.load(io.BytesIO(npy_bytes(array)), allow_pickle=False)
        assert got.dtype == expected.dtype and got.shape == expected.shape and np.array_equal(got, expected)
    good = npy_bytes(np.zeros(3, dtype=np.float32))
    for bad in (b"", good[:8], good[:-1], good + b"\0", npy_bytes(np.array([None, 1], dtype=object)), npz_bytes(),
                good[:6] + b"\x09" + good[7:], good[:8] + b"\xff\xff" + good[10:]):
        with pytest.raises(RequestError) as error:
            _load_npy(bad)
        assert error.value.status == 400 and error.value.message


def png_bomb() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (10 G) in a few hundred bytes: the pixel
    cap must refuse it from the header, before any decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 100_001 * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize("body, content_type, status", [
    (b"", "image/png", 400),
    (b"this is not an image", "image/png", 400),
    (b"this is not an image", "application/octet-stream", 400),
    (b"\x93NUMPY garbage", "application/x-npy", 400),
    ("float-wrong-shape", "application/x-npy", 400),
    ("int64-array", "application/x-npy", 400),
    ("pickled-object-array", "application/x-npy", 400),
    ("truncated-npy", "application/x-npy", 400),
    ("npz-archive", "application/x-npy", 400),
    (b"x=1", "application/x-www-form-urlencoded", 415),
    (b"{}", "application/json", 415),
    ("bomb", "image/png", 413),
    ("huge-image", "image/png", 413),
    ("negative-shape", "application/x-npy", 400),
    ("zero-size-bytes", "application/x-npy", 400),
    ("zero-size-void", "application/x-npy", 400),
    ("sub-array-descr", "application/x-npy", 400),
    ("structured", "application/x-npy", 400),
    ("float64-1e300", "application/x-npy", 400),
])
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, body, content_type, status):
    bodies = {
        "float-wrong-shape": lambda: npy_bytes(np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)),
        "int64-array": lambda: npy_bytes(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.int64)),
        "pickled-object-array": lambda: npy_bytes(np.array([{"a": 1}], dtype=object)),
        "truncated-npy": lambda: npy_bytes(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))[:-4],
        "npz-archive": npz_bytes,
        "bomb": png_bomb,
        "huge-image": lambda: png_bytes(np.zeros((4200, 4200), dtype=np.uint8)),
        # .npy headers that gave 500 with a traceback: negative shapes (with data bytes that match
        # their product), zero-size dtypes, a sub-array descr, a structured dtype
        "negative-shape": lambda: npy_with_header({"descr": "<f4", "fortran_order": False, "shape": (-2, -3)},
                                                  b"\0" * 24),
        "zero-size-bytes": lambda: npy_with_header({"descr": "|S0", "fortran_order": False,
                                                    "shape": (1, IMAGE_SIZE, IMAGE_SIZE)}),
        "zero-size-void": lambda: npy_with_header({"descr": "|V0", "fortran_order": False,
                                                   "shape": (1, IMAGE_SIZE, IMAGE_SIZE)}),
        "sub-array-descr": lambda: npy_with_header({"descr": ("<f4", (IMAGE_SIZE,)), "fortran_order": False,
                                                    "shape": (1, IMAGE_SIZE)}, b"\0" * 4 * IMAGE_SIZE * IMAGE_SIZE),
        "structured": lambda: npy_bytes(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE), dtype=[("a", "<f4")])),
        # finite as float64, infinite as the model's float32
        "float64-1e300": lambda: npy_bytes(np.full((1, IMAGE_SIZE, IMAGE_SIZE), 1e300)),
    }
    if isinstance(body, str):
        body = bodies[body]()
    got, answer = server.predict(body, content_type)
    assert got == status and isinstance(answer["error"], str) and answer["error"]
    ok, _ = server.predict(npy_bytes(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)), "application/x-npy")
    assert ok == 200


@pytest.mark.parametrize("header, value", [
    ("X-Deadline-Ms", "soon"), ("X-Deadline-Ms", "-5"), ("X-Deadline-Ms", "0"), ("X-Deadline-Ms", "nan"),
    ("X-Deadline-Ms", "1e12"), ("X-Budget", ""), ("X-Budget", "flops"), ("X-Budget", "watts=3"),
    ("X-Budget", "flops=abc"), ("X-Budget", "flops=inf"), ("X-Budget", "flops=-1"), ("X-Budget", "flops=0.0001"),
    ("X-Budget", "flops=20,flops=30"),
])
def test_a_bad_deadline_or_budget_header_gets_400_naming_it(server, header, value):
    before = server.metrics()
    status, answer = server.predict(npy_bytes(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)),
                                    "application/x-npy", {header: value})
    assert status == 400 and answer["error"].startswith(f"{header}: "), answer
    rejected = 'pssnet_rejected_requests_total{status="400"}'
    assert metric_value(server.metrics(), rejected) - metric_value(before, rejected) == 1


def test_request_budgets_and_deadlines_choose_the_subnet_and_are_counted(server, bundle_path):
    net = AdaptiveNet.load(bundle_path)
    body = npy_bytes(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))
    before = server.metrics()
    served = []
    # a budget alone (the target as deadline, met by every subnet of this tiny model): the most
    # accurate retained subnet within it, as AdaptiveNet.select picks it
    for r in sorted(net.subnets, key=lambda r: r.resources["flops"]):
        flops, params = r.resources["flops"], r.resources["params"]
        for budget, expected in ((f"flops={flops}", net.select(flops=flops)),
                                 (f"flops={flops}, params={params}", net.select(flops=flops, params=params))):
            status, answer = server.predict(body, "application/x-npy", {"X-Budget": budget})
            assert status == 200 and answer["subnet"] == expected.key, budget
            served.append(answer["subnet"])
    # a loose deadline: the most accurate of all; one no subnet can meet is answered, and counted as missed
    most_accurate = max(net.subnets, key=lambda r: (r.holdout_acc, -r.resources["flops"])).key
    status, answer = server.predict(body, "application/x-npy", {"X-Deadline-Ms": "10000"})
    assert status == 200 and answer["subnet"] == most_accurate
    served.append(answer["subnet"])
    status, answer = server.predict(body, "application/x-npy", {"X-Deadline-Ms": "0.001", "X-Budget": "flops=1e6"})
    assert status == 200
    served.append(answer["subnet"])
    after = server.metrics()
    misses = "pssnet_deadline_misses_total"
    assert metric_value(after, misses) - metric_value(before, misses) == 1
    for key in {r.key for r in net.subnets}:
        sample = f'pssnet_subnet_requests_total{{subnet="{key}"}}'
        assert metric_value(after, sample) - metric_value(before, sample) == served.count(key)


def test_an_oversized_body_is_refused_before_it_is_read(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
                     b"Content-Length: 1000000000\r\n\r\n\x93NUMPY")
        response = b""
        while not response.endswith(b"}") and (chunk := conn.recv(65536)):
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and b"over the limit" in payload
    ok, _ = server.predict(npy_bytes(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)), "application/x-npy")
    assert ok == 200


def test_status_metrics_and_healthz(server):
    before = server.get("/metrics")[2].decode()
    server.predict(npy_bytes(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)), "application/x-npy")
    assert server.predict(b"{}", "application/json")[0] == 415
    status, ctype, body = server.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, ctype, body = server.get("/status")
    info = json.loads(body)
    assert status == 200 and info["target_ms"] == 200 and info["quantile"] == 0.95
    assert info["subnet"] in {s["key"] for s in info["subnets"]}
    assert info["slowdown"] > 0 and info["p95_ms"] >= info["p50_ms"] > 0
    assert all(set(s["base_ms"]) == {"1", "2", "4"} for s in info["subnets"])  # calibrated at start-up
    status, ctype, body = server.get("/metrics")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain")
    for name in ("pssnet_request_latency_seconds_bucket", "pssnet_slo_misses_total", "pssnet_subnet_switches_total",
                 "pssnet_current_subnet_mflops", "pssnet_backlog_batches_total"):
        assert name in text
    assert metric_value(text, "pssnet_request_latency_seconds_count") - \
        metric_value(before, "pssnet_request_latency_seconds_count") == 1  # the answered request (not the 415)
    rejected = 'pssnet_rejected_requests_total{status="415"}'
    assert metric_value(text, rejected) - metric_value(before, rejected) == 1
    assert metric_value(text, "pssnet_current_subnet_mflops") == pytest.approx(info["subnet_mflops"])
    # /status and /metrics count the same switches (changes of the serving subnet, not backlog batches)
    assert isinstance(info["switches"], int) and metric_value(text, "pssnet_subnet_switches_total") == info["switches"]


def read_response(conn: socket.socket) -> bytes:
    response = b""
    while chunk := conn.recv(65536):
        response += chunk
    return response


def test_sigterm_drops_unfinished_uploads_at_once_answers_complete_requests_and_exits_0_quietly(bundle_path):
    net = AdaptiveNet.load(bundle_path)
    smallest = min(net.subnets, key=lambda r: r.resources["flops"]).key
    # A long batch wait: before any batch the server waits for --max-batch requests, so the complete
    # request below is still queued when SIGTERM comes.
    server = Server(bundle_path, "--slo-ms", "100", "--fixed", "smallest", "--max-wait-ms", "5000")
    body = npy_bytes(np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32))
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        pinned = json.loads(server.get("/status")[2])
        assert pinned["fixed"] and pinned["subnet"] == smallest and pinned["switches"] == 0
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as idle, \
                socket.create_connection(("127.0.0.1", server.port), timeout=20) as complete, \
                socket.create_connection(("127.0.0.1", server.port), timeout=20) as unfinished:
            complete.sendall(head + body)
            unfinished.sendall(head + body[:100])  # the rest never comes
            time.sleep(0.5)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            dropped = read_response(unfinished)
            dropped_s = time.monotonic() - signalled
            answered = read_response(complete)
            answered_s = time.monotonic() - signalled
            assert idle.recv(1) == b""  # an idle connection is closed, not waited for
        code = server.proc.wait(timeout=20)
        exited_s = time.monotonic() - signalled
        output = server.proc.stdout.read()
    finally:
        server.stop()
    status_line, _, payload = dropped.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 503") and "shutting down" in json.loads(payload)["error"]
    status_line, _, payload = answered.partition(b"\r\n\r\n")
    assert status_line.startswith(b"HTTP/1.1 200") and json.loads(payload)["subnet"] == smallest
    # at once: not the 5 s batch wait, nor the 30 s graceful shutdown
    assert dropped_s < 2 and answered_s < 2 and exited_s < 5, (dropped_s, answered_s, exited_s)
    assert code == 0 and "Traceback" not in output and "ERROR" not in output, output
    assert output.rstrip().endswith("pssnet serve: drained and stopped")


def test_cli_errors_are_one_line(bundle_path, tmp_path, capsys):
    from pssnet.cli import main

    for args, needle in ([str(tmp_path / "missing.pt"), "--slo-ms", "50"], "does not exist"), \
                        ([str(bundle_path), "--slo-ms", "-1"], "--slo-ms must be above 0"), \
                        ([str(bundle_path), "--slo-ms", "50", "--fixed", "r99-nope"], "not retained"):
        assert main(["serve", *args]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_a_missing_serve_extra_names_the_install_command(bundle_path, monkeypatch, capsys):
    from pssnet.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    assert main(["serve", str(bundle_path), "--slo-ms", "50"]) == 2
    assert "pip install 'pssnet[serve]'" in capsys.readouterr().err


def test_the_bundle_carries_its_preprocessing_and_a_bad_entry_is_refused():
    from pssnet.data import load_data
    from pssnet.data.bundle import preprocessing_record
    from pssnet.errors import UserError
    from pssnet.serving.preprocess import preprocessing_for

    shipped = load_data("fashion-mnist-mini").preprocessing
    assert shipped["class_names"][9] == "Ankle boot" and shipped["mean"] == list(normalisation("fashion-mnist")[0])
    run = tiny_run(data="fashion-mnist-mini")
    result, evaluator = evaluate_run(run, tiny_data(), CONFIG)
    record = preprocessing_record(1, IMAGE_SIZE, [0.5], [0.25], ["a", "b", "c", "d"])
    bundle = make_bundle(run, result, evaluator.stats, IMAGE_SIZE, record)
    net = AdaptiveNet.from_bundle(bundle)
    prep = preprocessing_for(net.info, net.info["preprocessing"])
    assert prep.class_names == ("a", "b", "c", "d") and prep.mean == (0.5,) and prep.std == (0.25,)
    for bad in ({"std": [0.0]}, {"class_names": ["a"]}, {"mean": [0.1, 0.2]}, {"crop_ratio": 2.0}):
        with pytest.raises(UserError, match="preprocessing"):
            AdaptiveNet.from_bundle({**bundle, "preprocessing": {**record, **bad}})


def test_preprocessing_entry_comes_first_and_rgb_jpeg_is_decoded_and_resized():
    from pssnet.serving.preprocess import RequestError, preprocessing_for

    info = {"model_config": {"in_chans": 3, "num_classes": 10, "resolutions": (24, 32, 4)}, "data": "cifar10:/x",
            "image_size": 32}
    derived = preprocessing_for(info)
    assert derived.class_names[0] == "airplane" and derived.mean == normalisation("cifar10")[0]
    entry = {"in_chans": 3, "image_size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
             "class_names": [f"c{i}" for i in range(10)]}
    prep = preprocessing_for(info, entry)
    assert prep.image_size == 16 and prep.class_names[3] == "c3" and prep.crop_ratio is None
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full((40, 30, 3), 191, dtype=np.uint8)).save(buffer, format="JPEG", quality=100)
    x = prep.decode(buffer.getvalue(), "image/jpeg")
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x, torch.full_like(x, (191 / 255 - 0.5) / 0.25), atol=0.05)  # JPEG is lossy
    with pytest.raises(RequestError) as error:  # a PNG declared as JPEG
        prep.decode(png_bytes(np.zeros((4, 4), dtype=np.uint8)), "image/jpeg")
    assert error.value.status == 400


def test_the_worker_batches_in_arrival_order_and_survives_abandoned_requests(bundle_path):
    from pssnet.serving import SloConfig, SloController, subnet_profiles
    from pssnet.serving.batcher import Batcher
    from pssnet.serving.metrics import ServingMetrics
    from pssnet.serving.worker import InferenceWorker

    net = AdaptiveNet.load(bundle_path)
    config = SloConfig(target_ms=1000, max_batch=4, max_wait_ms=200)
    batcher = Batcher(config.max_batch, config.max_wait_ms / 1e3)
    worker = InferenceWorker(net, SloController(subnet_profiles(net.subnets, net.kinds), config), batcher,
                             ServingMetrics(config.target_ms, config.max_batch))
    worker.start()
    inputs = torch.randn(6, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))
    jobs = [batcher.submit(x) for x in inputs]
    jobs[1].future.cancel()  # its client went away before the batch ran
    answers = [job.future.result(timeout=30) for i, job in enumerate(jobs) if i != 1]
    batcher.close()
    worker.join(30)
    assert not worker._thread.is_alive() and jobs[1].future.cancelled()
    reference = AdaptiveNet.load(bundle_path)  # the untimed first batch may make the controller switch
    for i, answer in zip([0, 2, 3, 4, 5], answers):
        reference.switch_to(reference.find(answer.subnet))
        with torch.no_grad():
            expected = torch.softmax(reference(inputs[i:i + 1]), dim=1)[0]
        assert torch.allclose(torch.tensor(answer.probabilities), expected, atol=1e-5)
    assert len({a.inference_ms for a in answers[:3]}) == 1  # the first four (one dropped) ran as one batch
    assert answers[3].inference_ms != answers[0].inference_ms


def test_the_worker_runs_requests_in_batches_grouped_by_the_subnet_their_budget_allows(bundle_path):
    from pssnet.serving import SloConfig, SloController, subnet_profiles
    from pssnet.serving.batcher import Batcher
    from pssnet.serving.controller import Need
    from pssnet.serving.metrics import ServingMetrics
    from pssnet.serving.worker import InferenceWorker

    net = AdaptiveNet.load(bundle_path)
    by_flops = sorted(net.subnets, key=lambda r: r.resources["flops"])
    smallest, largest = by_flops[0], by_flops[-1]
    config = SloConfig(target_ms=1000, max_batch=4, max_wait_ms=500)
    batcher = Batcher(config.max_batch, config.max_wait_ms / 1e3)
    metrics = ServingMetrics(config.target_ms, config.max_batch)
    worker = InferenceWorker(net, SloController(subnet_profiles(net.subnets, net.kinds), config), batcher, metrics)
    worker.start()
    inputs = torch.randn(4, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(8))
    small_only, large_only = Need(allowed=frozenset({smallest.key})), Need(allowed=frozenset({largest.key}))
    needs = [small_only, large_only, small_only, large_only]  # interleaved; the batch waits for all four
    jobs = [batcher.submit(x, need=need) for x, need in zip(inputs, needs)]
    answers = [job.future.result(timeout=30) for job in jobs]
    batcher.close()
    worker.join(30)
    assert [a.subnet for a in answers] == [smallest.key, largest.key, smallest.key, largest.key]
    # one batch per subnet: the requests of a subnet share a forward pass, the two subnets do not
    assert answers[0].inference_ms == answers[2].inference_ms != answers[1].inference_ms == answers[3].inference_ms
    for x, answer in zip(inputs, answers):
        expected = reference_probabilities(bundle_path, answer.subnet, x)
        assert torch.allclose(torch.tensor(answer.probabilities), expected, atol=1e-5)
    text = metrics.exposition().decode()
    for key in (smallest.key, largest.key):
        assert metric_value(text, f'pssnet_subnet_requests_total{{subnet="{key}"}}') == 2
