"""Adaptive serving under CPU interference: does `pssnet serve` keep its latency target where a
pinned subnet cannot, and how much of the largest subnet's accuracy does it keep?

    python benchmarks/slo.py --json s.json [--bundle runs/demo/adaptive.pt] [--seed 0] [--duration-s 90]

It starts `pssnet serve` subprocesses on 127.0.0.1 (--threads 1) and replays one seeded open-loop
Poisson trace against three servers: adaptive, --fixed largest and --fixed smallest. Each server
is pinned to one core, and during the middle third of each replay a CPU burner process (bounded
in time) runs on that same core, about halving the server's share of it; the client runs on the
other cores. Calibration first measures, through HTTP, the throughput of the largest and
smallest subnets with and without the burner (closed loop: full batches). The arrival rate is
--load (0.6) of the largest's throughput, moved where the machine allows into the range where
the largest is overloaded with interference (over 1.1x its throughput then) and the smallest has
room (under SMALLEST_UTILISATION, 0.6, of its throughput then), never above 0.7 of the largest's
throughput (where that range is empty, the middle of its ends). The target is the largest
subnet's time for TARGET_BATCHES (4) full batches at its measured throughput; open-loop probes
at the chosen rate, as the replay runs, report the largest's p95 without interference and check
that the smallest keeps the target with the burner; the script warns where a condition fails.
Without --bundle it runs `pssnet demo` first (or reuses runs/demo/adaptive.pt).

    python benchmarks/slo.py --trace mixed --json m.json

The same calibration and trace, each request drawn (seeded) into one of three deadline classes
(DEADLINE_CLASSES: tight, medium, loose, as multiples of the target) and sent with its
X-Deadline-Ms, against an adaptive server that honours the header; then the same trace without
headers against a server whose global target is the tight deadline (what one target must be to
serve every class). It reports each class's attainment (within its own deadline) and accuracy on
both. Targets: every class >= 0.95 with the headers, and the loose class at least as accurate as
on the global-target server.

    python benchmarks/slo.py --trace closed-loop --json c.json [--clients 16] [--closed-target-ms 50]

--clients keep-alive clients in a closed loop (each sends its next request when its answer
arrives, as `wrk -c 16` does) against three servers with --slo-ms 50: --fixed smallest with
--max-batch 8 (the batch size fixed by the cap, the issue's case), --fixed smallest with the batch
size chosen by the server up to --max-batch, and adaptive; each for --probe-s quiet, then with
the burners on its core. It reports requests/s, p50/p95/p99 and the share within the target.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from _common import parse_args, report

REPO = Path(__file__).resolve().parents[1]
MAX_REQUESTS = 50_000  # every replay is bounded in count ...
TARGET_BATCHES = 4  # the latency target: the largest subnet's time for this many full batches
# The most of the smallest subnet's closed-loop throughput with the burners that the rate may ask.
# Closed-loop probes run full batches; an open-loop Poisson trace gets smaller batches and bursts,
# and the adaptive server must also drain the backlog built while it detects the interference.
# At 0.69 of it (the demo's bundle after issue 16 narrowed its cost range) even the pinned smallest
# kept the target for only 0.956 of the requests and a backlog never drained; earlier runs ran at 0.61.
SMALLEST_UTILISATION = 0.6
REQUEST_TIMEOUT_S = 10.0  # ... and every request in time (a timed-out request counts as a miss)
WARM_CONNECTIONS = 64  # keep-alive connections opened before a replay starts
# The server and the burners share one core (the last one this process may use); the client runs
# on the others, so that interference slows the server and not the measurement.
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CORES = {CORES[-1]} if len(CORES) > 1 else None
CLIENT_CORES = set(CORES[:-1]) if len(CORES) > 1 else None
BURNER = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pin_to_server_core() -> None:
    if SERVER_CORES:
        os.sched_setaffinity(0, SERVER_CORES)


def http_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


class Server:
    """`pssnet serve` in a subprocess on 127.0.0.1; stopped with SIGTERM (killed if it hangs)."""

    def __init__(self, bundle: Path, slo_ms: float, max_batch: int, extra: list[str]) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "pssnet", "serve", str(bundle), "--slo-ms", f"{slo_ms:.3f}", "--port",
               str(self.port), "--threads", "1", "--max-batch", str(max_batch), *extra]
        self.log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would block the server
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log, text=True,
                                     preexec_fn=_pin_to_server_core)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"pssnet serve exited: {self.log.read()}")
            try:
                http_json(self.port, "/healthz")
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("pssnet serve did not come up within 180 s")

    def status(self) -> dict:
        return http_json(self.port, "/status")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Burners:
    """CPU interference: ``count`` busy-loop processes that end by themselves after ``seconds``."""

    def __init__(self, count: int, seconds: float) -> None:
        code = BURNER.format(seconds=seconds)
        self.procs = [subprocess.Popen([sys.executable, "-c", code], preexec_fn=_pin_to_server_core)
                      for _ in range(count)]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait()


# ----------------------------------------------------------------------------- the client


@dataclass
class Result:
    start: float  # scheduled send time, s from the replay's start
    latency_ms: float  # scheduled send to full response (inf: failed or timed out)
    subnet: str = ""
    extra: dict = field(default_factory=dict)


class Client:
    """Keep-alive HTTP/1.1 connections to one server, reused across requests (as a real load
    balancer would), so that the server's CPU goes to serving rather than to TCP set-up."""

    IDLE_S = 2.0  # the server closes connections idle for 5 s (uvicorn's default); never reuse one that old

    def __init__(self, port: int) -> None:
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = asyncio.get_running_loop().time()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < self.IDLE_S and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, body: bytes, headers: bytes = b"") -> dict:
        """POST /predict; ``headers``: extra header lines, each ending in CRLF."""
        reader, writer = await self._connection()
        try:
            writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
                         b"Content-Length: %d\r\n%s\r\n" % (len(body), headers) + body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            payload = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        self._idle.append((reader, writer, asyncio.get_running_loop().time()))
        if not head.startswith(b"HTTP/1.1 200"):
            raise OSError(head.split(b"\r\n")[0].decode(errors="replace"))
        return json.loads(payload)

    async def open(self, count: int) -> None:
        """Open ``count`` connections ahead of time, as a load balancer keeps them to its backends:
        otherwise the first second of a replay measures TCP and connection set-up."""
        now = asyncio.get_running_loop().time()
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self._idle.append((reader, writer, now))

    def close(self) -> None:
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()


async def _replay(port: int, arrivals: list[float], body: bytes, deadline_s: float,
                  headers: Optional[list[bytes]] = None) -> list[Result]:
    """Send one request at each arrival time (open loop: never waits for earlier answers), with
    ``headers[i]`` (extra header lines) on the i-th.

    One dispatcher starts each request at its time. Creating all the requests' tasks up front
    and letting each sleep until its time kept the client's loop busy for the first half second
    (tens of thousands of tasks), and that lateness was counted as latency."""
    loop = asyncio.get_running_loop()
    client = Client(port)
    await client.open(WARM_CONNECTIONS)
    t0 = loop.time()

    async def one(at: float, extra: bytes) -> Result:
        try:
            answer = await asyncio.wait_for(client.post(body, extra), REQUEST_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, StopIteration):
            return Result(at, float("inf"))
        return Result(at, 1e3 * (loop.time() - t0 - at), answer["subnet"])

    tasks = []
    for i, at in enumerate(arrivals):
        delay = t0 + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(at, headers[i] if headers else b"")))
    done, pending = set(), set()
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, t0 + deadline_s - loop.time()))
    for task in pending:
        task.cancel()
    client.close()
    return sorted((t.result() for t in done if not t.cancelled()), key=lambda r: r.start)


async def _closed_loop(port: int, body: bytes, clients: int, seconds: float) -> int:
    """Requests answered by ``clients`` back-to-back senders in ``seconds`` (throughput probe)."""
    loop = asyncio.get_running_loop()
    client = Client(port)
    end = loop.time() + seconds
    count = 0

    async def sender() -> None:
        nonlocal count
        while loop.time() < end:
            try:
                await asyncio.wait_for(client.post(body), REQUEST_TIMEOUT_S)
                count += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, StopIteration):
                pass

    await asyncio.gather(*(sender() for _ in range(clients)))
    client.close()
    return count


async def _closed_loop_latencies(port: int, body: bytes, clients: int, seconds: float) -> list[Result]:
    """Every request of ``clients`` back-to-back senders on keep-alive connections for ``seconds``
    (as wrk -c CLIENTS does): its send time, latency and subnet (a failure: inf)."""
    loop = asyncio.get_running_loop()
    client = Client(port)
    await client.open(clients)
    t0 = loop.time()
    results: list[Result] = []

    async def sender() -> None:
        while (start := loop.time()) < t0 + seconds:
            try:
                answer = await asyncio.wait_for(client.post(body), REQUEST_TIMEOUT_S)
                results.append(Result(start - t0, 1e3 * (loop.time() - start), answer["subnet"]))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, StopIteration):
                results.append(Result(start - t0, float("inf")))

    await asyncio.gather(*(sender() for _ in range(clients)))
    client.close()
    return results


def replay(port: int, arrivals: list[float], body: bytes, duration_s: float,
           headers: Optional[list[bytes]] = None) -> list[Result]:
    return asyncio.run(_replay(port, arrivals, body, duration_s + 3 * REQUEST_TIMEOUT_S, headers))


def closed_loop(port: int, body: bytes, clients: int, seconds: float) -> list[Result]:
    return asyncio.run(_closed_loop_latencies(port, body, clients, seconds))


def throughput(port: int, body: bytes, clients: int, seconds: float) -> float:
    return asyncio.run(_closed_loop(port, body, clients, seconds)) / seconds


def p95_ms(latencies: list[float]) -> float:
    """The p95 of latencies in ms, a failed or timed-out request counted as the timeout (a lower
    bound of its latency; inf would make the percentile's interpolation NaN)."""
    bounded = [min(latency, 1e3 * REQUEST_TIMEOUT_S) for latency in latencies]
    return float(np.percentile(bounded, 95)) if bounded else float("nan")


def poisson_trace(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    rng, t, times = random.Random(seed), 0.0, []
    while len(times) < MAX_REQUESTS:
        t += rng.expovariate(rate_per_s)
        if t >= duration_s:
            break
        times.append(t)
    return times


# ----------------------------------------------------------------------------- set-up


def demo_bundle(epochs: float) -> Path:
    """runs/demo/adaptive.pt, trained by `pssnet demo` unless it exists."""
    path = REPO / "runs" / "demo" / "adaptive.pt"
    if not path.is_file():
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        subprocess.run([sys.executable, "-m", "pssnet", "demo", "--out", str(path.parent), "--epochs", str(epochs)],
                       env=env, check=True, timeout=3600)
    return path


def request_body(status: dict) -> bytes:
    """One normalised model input as .npy (the same image for every request)."""
    x = np.random.default_rng(0).standard_normal(status["input_shape"]).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def open_loop_p95(server: Server, body: bytes, rate: float, args, burners: int = 0) -> float:
    """p95 latency (ms) of an open-loop probe at ``rate``, with ``burners`` on the server's core."""
    arrivals = poisson_trace(rate, args.probe_s, args.seed + 1)
    interference = Burners(burners, args.probe_s + 5) if burners else None
    try:
        if interference:
            time.sleep(0.5)
        probe = [r.latency_ms for r in replay(server.port, arrivals, body, args.probe_s)]
    finally:
        if interference:
            interference.stop()
    return p95_ms(probe)


def calibrate(bundle: Path, args) -> dict:
    """Throughputs (req/s) of the largest and smallest with and without burners; the rate and target.

    The throughput probes are closed loop (full batches: what each subnet can do at most). The
    target is the time the largest takes to serve ``TARGET_BATCHES`` full batches at that
    throughput; the rate's conditions are then checked the way the replay runs, open loop at
    that rate: the largest's p95 without burners (reported), and whether the smallest's p95 with
    the burners stays within the target."""
    measured, servers = {}, {}
    try:
        for which in ("smallest", "largest"):
            server = servers[which] = Server(bundle, 1000.0, args.max_batch, ["--fixed", which])
            body = request_body(server.status())
            clients = 2 * args.max_batch
            throughput(server.port, body, clients, 1.0)  # warm-up
            measured[which] = throughput(server.port, body, clients, args.probe_s)
            burners = Burners(args.burners, args.probe_s + 5)
            try:
                time.sleep(0.5)
                measured[which + "_interference"] = throughput(server.port, body, clients, args.probe_s)
            finally:
                burners.stop()
        rate = pick_rate(measured["largest"], measured["largest_interference"], measured["smallest_interference"],
                         args.load)
        p95 = open_loop_p95(servers["largest"], body, rate, args)
        # The target, from the largest's measured throughput: TARGET_BATCHES full batches' time. A
        # short open-loop probe's p95 swung from 50 to 300 ms between runs on this machine.
        target = TARGET_BATCHES * 1e3 * args.max_batch / measured["largest"]
        measured.update(rate_per_s=rate, probe_p95_ms=p95, target_ms=target)
        measured["smallest_interference_probe_p95_ms"] = open_loop_p95(servers["smallest"], body, rate, args,
                                                                       args.burners)
    finally:
        for server in servers.values():
            server.stop()
    measured["largest_overloaded_with_interference"] = measured["rate_per_s"] > measured["largest_interference"]
    measured["smallest_copes_with_interference"] = (measured["smallest_interference_probe_p95_ms"]
                                                    <= measured["target_ms"])
    return measured


def pick_rate(throughput_largest: float, largest_interference: float, smallest_interference: float,
              load: float) -> float:
    """``load`` of the largest subnet's throughput, moved where needed (and where the machine
    allows) into the range where the largest is overloaded with interference (> 1.1x its
    throughput then) and the smallest is not (< SMALLEST_UTILISATION of its throughput then),
    never above 0.7. Where the range is empty, the geometric middle of its two ends: both conditions
    then miss by the same factor, and the benchmark warns about them."""
    rate = load * throughput_largest
    low = 1.1 * largest_interference
    high = min(0.7 * throughput_largest, SMALLEST_UTILISATION * smallest_interference)
    return min(max(rate, low), high) if low <= high else math.sqrt(low * high)


def run_server(bundle: Path, mode: list[str], setup: dict, arrivals: list[float], args,
               headers: Optional[list[bytes]] = None) -> dict:
    """Replay ``arrivals`` (with ``headers``) against one server, burners during the middle third."""
    server = Server(bundle, setup["target_ms"], args.max_batch, mode)
    try:
        status = server.status()
        body = request_body(status)
        third = args.duration_s / 3
        loop_start = time.monotonic()
        burners_box: list[Burners] = []

        def start_burners() -> None:
            burners_box.append(Burners(args.burners, third))

        timer = threading.Timer(third, start_burners)
        timer.start()
        try:
            results = replay(server.port, arrivals, body, args.duration_s, headers)
        finally:
            timer.cancel()
            for b in burners_box:
                b.stop()
        elapsed = time.monotonic() - loop_start
        final = server.status()
    finally:
        server.stop()
    accuracy = {s["key"]: s["accuracy"] for s in status["subnets"]}
    flops = {s["key"]: s["mflops"] for s in status["subnets"]}
    latencies = [r.latency_ms for r in results] + [float("inf")] * (len(arrivals) - len(results))
    served = [r for r in results if r.subnet]
    return {
        "attainment": sum(lat <= setup["target_ms"] for lat in latencies) / max(1, len(latencies)),
        "accuracy": statistics.fmean(accuracy[r.subnet] for r in served) if served else float("nan"),
        "p95_ms": p95_ms(latencies),
        "switches": int(final["switches"]),
        "overhead_ms": float(final["overhead_ms"]),  # the server's CPU per request outside forward passes
        "failed": sum(1 for r in results if not r.subnet) + len(arrivals) - len(results),
        "elapsed_s": elapsed,
        "timeline": [(r.start, r.latency_ms, flops.get(r.subnet, float("nan"))) for r in results],
        "results": results,
        "accuracy_of": accuracy,
    }


# ----------------------------------------------------------------------------- mixed deadlines

# Three deadline classes, as multiples of the calibrated target (the largest subnet's time for
# TARGET_BATCHES full batches, which the smallest keeps with the burners and the largest without):
# tight requests need a small subnet under interference, loose ones can wait for the largest.
DEADLINE_CLASSES = (("tight", 1.0), ("medium", 2.0), ("loose", 4.0))


def mixed_classes(count: int, seed: int) -> list[str]:
    """A seeded class (tight, medium or loose, one third each on average) for each of ``count`` requests."""
    rng = random.Random(seed + 2)
    names = [name for name, _ in DEADLINE_CLASSES]
    return [rng.choice(names) for _ in range(count)]


def class_summary(results: list[Result], arrivals: list[float], classes: list[str], deadlines: dict[str, float],
                  accuracy_of: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per class: the share of its requests answered within its deadline (a lost request counts as
    a miss) and the mean held-out accuracy of the subnets that answered it."""
    by_start = {r.start: r for r in results}
    summary = {}
    for name in deadlines:
        mine = [by_start.get(at) for at, c in zip(arrivals, classes) if c == name]
        served = [r for r in mine if r is not None and r.subnet]
        summary[name] = {
            "attainment": sum(r is not None and r.latency_ms <= deadlines[name] for r in mine) / max(1, len(mine)),
            "accuracy": statistics.fmean(accuracy_of[r.subnet] for r in served) if served else float("nan"),
            "requests": len(mine)}
    return summary


def run_mixed(bundle: Path, setup: dict, arrivals: list[float], args) -> dict:
    """The mixed trace against a server that honours X-Deadline-Ms and one that ignores it (the
    same trace without headers, its global target the tight deadline: the target that one server
    must keep to serve every class); each class's attainment and accuracy on both."""
    deadlines = {name: factor * setup["target_ms"] for name, factor in DEADLINE_CLASSES}
    classes = mixed_classes(len(arrivals), args.seed)
    headers = [b"X-Deadline-Ms: %.3f\r\n" % deadlines[c] for c in classes]
    aware = run_server(bundle, [], setup, arrivals, args, headers)
    ignoring = run_server(bundle, [], {**setup, "target_ms": deadlines["tight"]}, arrivals, args)
    results = {f"mixed_deadline_ms_{name}": ms for name, ms in deadlines.items()}
    for label, run in (("headers", aware), ("global", ignoring)):
        for name, row in class_summary(run["results"], arrivals, classes, deadlines, run["accuracy_of"]).items():
            results.update({f"mixed_attainment_{name}_{label}": row["attainment"],
                            f"mixed_accuracy_{name}_{label}": row["accuracy"],
                            f"mixed_requests_{name}": row["requests"]})
        results[f"mixed_switches_{label}"] = run["switches"]
    return results


def report_mixed(setup: dict, arrivals: list[float], results: dict, args) -> None:
    rows = []
    for name, _ in DEADLINE_CLASSES:
        for label, target in (("headers", ">= 0.95"), ("global", "")):
            rows.append((f"mixed_attainment_{name}_{label}", f"{results[f'mixed_attainment_{name}_{label}']:.3f}",
                         target))
        for label in ("headers", "global"):
            key = f"mixed_accuracy_{name}_{label}"
            target = f">= {results['mixed_accuracy_loose_global']:.2f}" if key == "mixed_accuracy_loose_headers" else ""
            rows.append((key, f"{results[key]:.2f}", target))
    deadlines = ", ".join(f"{name} {results[f'mixed_deadline_ms_{name}']:.0f} ms" for name, _ in DEADLINE_CLASSES)
    report(f"mixed deadlines ({deadlines}), {len(arrivals)} requests at {setup['rate_per_s']:.1f}/s over "
           f"{args.duration_s:g} s, burners in the middle third", rows, results, args.json)


# ----------------------------------------------------------------------------- closed loop

# The closed-loop servers: the case (the smallest subnet, a fixed batch of 8), the same
# subnet with the batch size chosen by the controller, and adaptive serving.
CLOSED_LOOP_SERVERS = (("smallest_b8", ["--fixed", "smallest"], 8), ("smallest_chosen", ["--fixed", "smallest"], None),
                       ("adaptive", [], None))


def latency_summary(results: list[Result], seconds: float, target_ms: float) -> dict[str, float]:
    """Requests per second, p50/p95/p99 (a failure counted as the timeout) and the share within the target."""
    latencies = [min(r.latency_ms, 1e3 * REQUEST_TIMEOUT_S) for r in results]
    if not latencies:
        return {"rps": 0.0, "p50_ms": math.nan, "p95_ms": math.nan, "p99_ms": math.nan, "attainment": 0.0}
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return {"rps": len(latencies) / seconds, "p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99),
            "attainment": sum(lat <= target_ms for lat in latencies) / len(latencies)}


def run_closed_loop(bundle: Path, args) -> dict:
    """``--clients`` keep-alive clients in a closed loop (as wrk -c) against each server of
    CLOSED_LOOP_SERVERS for ``--probe-s`` seconds, quiet and then with the burners on its core."""
    results = {"closed_target_ms": args.closed_target_ms, "closed_clients": args.clients}
    for name, mode, max_batch in CLOSED_LOOP_SERVERS:
        server = Server(bundle, args.closed_target_ms, max_batch or args.max_batch, mode)
        try:
            body = request_body(server.status())
            closed_loop(server.port, body, args.clients, 1.0)  # warm-up: the fill size and slow-down settle
            for phase in ("quiet", "hog"):
                burners = Burners(args.burners, args.probe_s + 5) if phase == "hog" else None
                try:
                    if burners:
                        time.sleep(0.5)
                    run = closed_loop(server.port, body, args.clients, args.probe_s)
                finally:
                    if burners:
                        burners.stop()
                status = server.status()
                summary = latency_summary(run, args.probe_s, args.closed_target_ms)
                summary.update(fill=status["fill"], server_p95_ms=status["p95_ms"] or math.nan)
                results.update({f"closed_{name}_{phase}_{k}": v for k, v in summary.items()})
        finally:
            server.stop()
    return results


def report_closed_loop(results: dict, args) -> None:
    rows = []
    for name, _, _ in CLOSED_LOOP_SERVERS:
        for phase in ("quiet", "hog"):
            prefix = f"closed_{name}_{phase}"
            rows.append((f"{prefix}_rps / p95_ms / p99_ms", f"{results[prefix + '_rps']:.0f} / "
                         f"{results[prefix + '_p95_ms']:.1f} / {results[prefix + '_p99_ms']:.1f}",
                         f"attainment {results[prefix + '_attainment']:.3f}, fill {results[prefix + '_fill']}"))
    report(f"closed loop: {args.clients} keep-alive clients, target {args.closed_target_ms:g} ms, "
           f"{args.probe_s:g} s per phase, the burners on the server's core in the hog phase", rows, results, args.json)


# ----------------------------------------------------------------------------- output


def plot(runs: dict, setup: dict, duration_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    colours = {"adaptive": "tab:blue", "largest": "tab:red", "smallest": "tab:green"}
    for name, run in runs.items():
        t = [p[0] for p in run["timeline"]]
        lat = [min(p[1], 1e4) for p in run["timeline"]]
        ax.scatter(t, lat, s=3, alpha=0.5, color=colours[name], label=f"{name} (p95 {run['p95_ms']:.0f} ms)")
    ax.axhline(setup["target_ms"], color="black", linestyle="--", label=f"target {setup['target_ms']:.0f} ms")
    ax.axvspan(duration_s / 3, 2 * duration_s / 3, color="grey", alpha=0.15, label="CPU interference")
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("request latency (ms)")
    twin = ax.twinx()
    adaptive = sorted(runs["adaptive"]["timeline"])
    twin.step([p[0] for p in adaptive], [p[2] for p in adaptive], where="post", color="tab:purple", linewidth=1,
              label="adaptive subnet MFLOPs")
    twin.set_ylabel("adaptive subnet MFLOPs")
    twin.set_ylim(0, 1.15 * max((p[2] for p in adaptive if p[2] == p[2]), default=1.0))
    handles = ax.get_legend_handles_labels()
    twin_handles = twin.get_legend_handles_labels()
    ax.legend(handles[0] + twin_handles[0], handles[1] + twin_handles[1], loc="upper left", fontsize=8,
              markerscale=3)
    ax.set_title(f"{setup['rate_per_s']:.0f} requests/s, open loop, same seeded trace for all three servers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse() -> argparse.Namespace:
    return parse_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--trace", choices=("interference", "mixed", "closed-loop"), default="interference",
                       help="interference: adaptive vs pinned subnets (default); mixed: three deadline classes "
                            "(X-Deadline-Ms) vs a server that ignores them; closed-loop: --clients back-to-back "
                            "clients, fixed batch of 8 vs batch sizes chosen by the server"),
        p.add_argument("--bundle", type=Path, help="adaptive.pt (default: the demo's, trained if missing)"),
        p.add_argument("--seed", type=int, default=0, help="seed of the arrival trace"),
        p.add_argument("--duration-s", type=float, default=90.0, help="length of each replay (default 90)"),
        p.add_argument("--probe-s", type=float, default=4.0,
                       help="length of each calibration probe and closed-loop phase (default 4)"),
        p.add_argument("--load", type=float, default=0.6,
                       help="arrival rate as a share of the largest subnet's throughput (default 0.6)"),
        p.add_argument("--burners", type=int, default=1,
                       help="CPU burner processes on the server's core during interference (default 1: about 2x)"),
        p.add_argument("--max-batch", type=int, default=32,
                       help="--max-batch of the servers (default 32: under overload, bigger batches buy throughput)"),
        p.add_argument("--clients", type=int, default=16, help="closed loop: concurrent clients (default 16)"),
        p.add_argument("--closed-target-ms", type=float, default=50.0,
                       help="closed loop: --slo-ms of the servers (default 50)"),
        p.add_argument("--demo-epochs", type=float, default=1.5, help="epochs when training the demo bundle"),
        p.add_argument("--plot", type=Path, default=REPO / "docs" / "slo_timeline.png",
                       help="timeline PNG (default docs/slo_timeline.png, shown in the README)"),
    ))


def main() -> None:
    args = parse()
    bundle = args.bundle or demo_bundle(args.demo_epochs)
    if CLIENT_CORES:
        os.sched_setaffinity(0, CLIENT_CORES)
        print(f"server and burners on core {sorted(SERVER_CORES)}, client on {sorted(CLIENT_CORES)}")
    if args.trace == "closed-loop":
        report_closed_loop(run_closed_loop(bundle, args), args)
        return
    setup = calibrate(bundle, args)
    print(f"calibration: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in setup.items()})}")
    if not setup["largest_overloaded_with_interference"]:
        print("warning: with the burners the largest subnet still keeps up with this rate; the interference is "
              "too weak on this machine (raise --burners or --load)")
    if not setup["smallest_copes_with_interference"]:
        print("warning: with the burners even the smallest subnet missed the target in the open-loop probe at this "
              "rate; no subnet choice may keep it (lower --burners or --load)")
    arrivals = poisson_trace(setup["rate_per_s"], args.duration_s, args.seed)
    results = {"requests": len(arrivals), "rate_per_s": setup["rate_per_s"], "target_ms": setup["target_ms"],
               "duration_s": args.duration_s, "burners": args.burners, "seed": args.seed}
    results.update({f"calibration_{k}": v for k, v in setup.items() if k not in ("rate_per_s", "target_ms")})
    if args.trace == "mixed":
        report_mixed(setup, arrivals, {**results, **run_mixed(bundle, setup, arrivals, args)}, args)
    else:
        run_interference(bundle, setup, arrivals, results, args)


def run_interference(bundle: Path, setup: dict, arrivals: list[float], results: dict, args) -> None:
    """The interference trace against adaptive, --fixed largest and --fixed smallest servers."""
    runs = {name: run_server(bundle, mode, setup, arrivals, args)
            for name, mode in (("adaptive", []), ("largest", ["--fixed", "largest"]),
                               ("smallest", ["--fixed", "smallest"]))}
    acc = {name: run["accuracy"] for name, run in runs.items()}
    spread = acc["largest"] - acc["smallest"]
    recovered = (acc["adaptive"] - acc["smallest"]) / spread if spread > 0 else float("nan")
    results["accuracy_recovered"] = recovered
    for name, run in runs.items():
        results.update({f"slo_attainment_{name}": run["attainment"], f"accuracy_{name}": run["accuracy"],
                        f"p95_ms_{name}": run["p95_ms"], f"switches_{name}": run["switches"],
                        f"failed_{name}": run["failed"], f"overhead_ms_{name}": run["overhead_ms"]})
    plot(runs, setup, args.duration_s, args.plot)
    rows = [(f"slo_attainment_{n}", f"{runs[n]['attainment']:.3f}", t) for n, t in
            (("adaptive", ">= 0.95"), ("largest", "<= 0.85"), ("smallest", ""))]
    rows += [(f"accuracy_{n}", f"{acc[n]:.2f}", "") for n in runs]
    rows += [("accuracy_recovered", f"{recovered:.2f}", ">= 0.5")]
    rows += [(f"p95_ms_{n}", f"{runs[n]['p95_ms']:.1f}", f"target {setup['target_ms']:.1f}") for n in runs]
    rows += [(f"switches_{n}", str(runs[n]["switches"]), "") for n in runs]
    report(f"adaptive serving, {len(arrivals)} requests at {setup['rate_per_s']:.1f}/s over {args.duration_s:g} s "
           f"(timeline: {args.plot})", rows, results, args.json)


if __name__ == "__main__":
    main()
