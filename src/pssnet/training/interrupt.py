"""Stopping a run on request: SIGINT/SIGTERM end training at an iteration boundary with a checkpoint.

The first signal asks the loop to stop after the current iteration; a second one aborts at once
(the previous handler runs, e.g. KeyboardInterrupt). Handlers exist only while the loop runs.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``exit_status`` is 128 + signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """A context manager that records the first SIGINT/SIGTERM in :attr:`signum` (0: none yet).

    Outside the main thread (where Python cannot take signals) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # the second signal: give it to the previous handler, now
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
