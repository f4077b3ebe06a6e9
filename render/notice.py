"""A one-line notice on stderr when a step turns out slow (a first run's kernel compilation), so a
new user does not take a minute of silence for a hang; fast (cached) runs print nothing."""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager


@contextmanager
def notice_if_slow(message: str, after: float | None = 2.0):
    """Print ``message`` to stderr if the block is still running ``after`` seconds in (None: never)."""
    if after is None:
        yield
        return
    timer = threading.Timer(after, lambda: print(message, file=sys.stderr, flush=True))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
