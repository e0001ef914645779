"""SIGTERM / SIGINT as a request to stop cleanly: the handler only records the signal; the loop
checks once per step, saves a checkpoint at that step and returns, so a rerun continues exactly."""

import signal
import threading
from types import FrameType
from typing import Self

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    """Use as a context manager around the loop; `requested()` is the per-step check.

    A second SIGINT raises KeyboardInterrupt at once: someone pressing Ctrl-C twice wants out now,
    and the last finished checkpoint is still there to resume from. Repeated SIGTERMs (schedulers
    send them) only renew the request.
    """

    def __init__(self) -> None:
        self.name: str | None = None  # of the first signal received
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.name is not None:
            raise KeyboardInterrupt
        self.name = self.name or signal.Signals(signum).name

    def __enter__(self) -> Self:
        # Handlers can only be set from the main thread; a loop run elsewhere (a notebook worker
        # thread) keeps the default behaviour.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def requested(self) -> bool:
        """Whether to stop after this step; every host gets the same answer (a scheduler signals
        hosts at slightly different moments, and all of them must save the same step)."""
        if jax.process_count() == 1:
            return self.name is not None
        flags = multihost_utils.process_allgather(np.int32(self.name is not None))
        if np.any(flags) and self.name is None:
            self.name = "a signal on another host"
        return bool(np.any(flags))
