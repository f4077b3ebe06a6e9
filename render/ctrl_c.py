"""Ctrl-C (SIGINT) recorded instead of raised while a stretch of work runs, for the long jobs that
stop cleanly at their next step (a path tracer's pass, a training step) and for imports that would
swallow a KeyboardInterrupt raised inside them."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def ctrl_c_requests(enabled: bool = True, second_raises: bool = True):
    """Yield a list that each Ctrl-C arriving while the block runs appends to, in place of raising
    KeyboardInterrupt; the caller stops at its next step when the list is not empty. With
    ``second_raises`` a second Ctrl-C raises KeyboardInterrupt at once (for a user who will not
    wait). The previous handler is restored on leaving. Disabled, or outside the main thread (where
    Python cannot take signals), the list stays empty and Ctrl-C behaves as before."""
    presses: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield presses
        return

    def on_sigint(signum, frame):
        presses.append(signum)
        if second_raises and len(presses) > 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield presses
    finally:
        signal.signal(signal.SIGINT, previous)
