"""Ctrl-C as a request to stop at the next safe point, instead of an exception mid-write.

A ``KeyboardInterrupt`` raised at an arbitrary bytecode can land inside a file write, an
optimiser step or a library that turns it into something else. Long jobs (collection,
training) instead install :class:`StopRequest`, check ``requested`` between units of work and
leave cleanly. A second Ctrl-C raises ``KeyboardInterrupt`` as usual, for a user who will not
wait.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self._previous: signal.Handlers | None | object = None
        self._installed = False

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be set from the main thread; elsewhere Ctrl-C keeps its
        # default behaviour and the ``except KeyboardInterrupt`` paths still apply.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self._installed = False
