"""Pausing Python's cyclic garbage collector around bulk loading."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Parsing allocates many objects and almost no cycles; left on, the cyclic collector runs
    again and again over the growing heap, which makes loading slower per item as it grows."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
