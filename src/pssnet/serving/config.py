"""What ``pssnet serve`` is asked for: the latency objective and the knobs of its controller
(:class:`SloConfig`, times in ms), and the server's own settings (:class:`ServeConfig`).

Each field declares its flag and bounds (:mod:`pssnet.options`); the controller's knobs have no
flag (Python API only). Importable without the ``serve`` extra, so that the command's flags are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from ..errors import UserError
from ..options import check_bounds, option


@dataclass(frozen=True)
class SloConfig:
    """The latency objective and the controller's knobs (times in ms)."""

    target_ms: float = option(flag="--slo-ms", above=0.0, required=True, help="latency target in milliseconds")
    # The stretch of the predictions is the errors' quantile: below the median it would shrink them.
    quantile: float = option(0.95, min=0.5, below=1.0,
                             help="share of requests within the target, in [0.5, 1) (default 0.95)")
    # A ceiling, not the operating point: the controller picks each batch's size within it.
    max_batch: int = option(32, min=1, help="most requests per inference batch; the controller picks each batch's "
                                            "size up to it (default 32)")
    max_wait_ms: float = option(5.0, min=0.0, help="longest a request waits for others to fill its batch (default 5)")
    margin: float = option(0.8, flag=None, above=0.0, max=1.0,
                           help="plan each batch to complete within margin x target")
    up_margin: float = option(0.6, flag=None, above=0.0, max=1.0,
                              help="a step up needs predictions within up_margin x target (at most margin) ...")
    up_hold_ms: float = option(2000.0, flag=None, min=0.0, help="... continuously for this long")
    up_hold_batches: int = option(10, flag=None, min=1, help="... and for this many batches")
    down_batches: int = option(3, flag=None, min=1,
                               help="a step down needs this many batches in a row that miss in steady state")
    max_utilisation: float = option(0.95, flag=None, above=0.0, max=1.0,
                                    help="share of a subnet's capacity the arrival rate may use")
    up_utilisation: float = option(0.85, flag=None, above=0.0, max=1.0,
                                   help="the same, for stepping up (at most max_utilisation)")
    smoothing: float = option(0.3, flag=None, above=0.0, max=1.0,
                              help="EWMA weight of one observation in the slow-down factor")
    error_window: int = option(64, flag=None, min=1, help="batches whose prediction errors give the quantile's stretch")
    rate_window_ms: float = option(2000.0, flag=None, above=0.0, help="arrivals counted for the arrival rate")
    batch_shape: float = option(4.0, flag=None, min=0.0, help="prior: a batch of b costs like (batch_shape + b) images")
    fill_window: int = option(4, flag=None, min=1,
                              help="batches whose queue lengths set how many requests a batch waits for")

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.up_margin > self.margin:
            raise UserError(f"need up_margin <= margin, got {self.up_margin} > {self.margin}")
        if self.up_utilisation > self.max_utilisation:
            raise UserError(f"need up_utilisation <= max_utilisation, got {self.up_utilisation} > "
                            f"{self.max_utilisation}")


@dataclass(frozen=True)
class ServeConfig:
    """What ``pssnet serve`` was asked for (each field declares its flag and bounds)."""

    bundle: Union[str, os.PathLike] = option(positional=True, metavar="BUNDLE",
                                             help="adaptive.pt or adaptive/ (a Hub folder) written by pssnet eval")
    slo: SloConfig
    host: str = option("127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; another "
                                         "address is reachable from other machines and gets a note)")
    port: int = option(8000, min=0, max=65535, help="port (default 8000)")
    fixed: Optional[str] = option(None, metavar="largest|smallest|KEY",
                                  help="pin one subnet (the baseline) instead of adapting")
    threads: Optional[int] = option(None, min=1, help="torch CPU threads for inference (default: torch's)")
    top_k: int = option(5, flag=None, min=1, help="classes in each answer")
    calibration_repeats: int = option(5, flag=None, min=1, help="timed calls per subnet and batch size at start-up")
    body_timeout_s: float = option(10.0, above=0.0, help="longest a request's body may take to arrive, in seconds; "
                                                         "slower uploads get 408 (default 10)")
    max_buffered_mb: float = option(64.0, above=0.0, help="most MiB of request bodies held at once across "
                                                          "connections; beyond it the oldest unfinished upload "
                                                          "gets 503 (default 64)")

    def __post_init__(self) -> None:
        check_bounds(self)
