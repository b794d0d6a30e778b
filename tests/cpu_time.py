"""CPU time of one call with the garbage collector paused.

Linear-time tests compare the CPU time of a small and a large input. Late in a long test session the heap holds
everything earlier tests left, and a full collection that happens to start during the large call costs time in
proportion to that heap, not to the input: the comparison then measures the session, not the function.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any


def cpu_seconds(function: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    gc.collect()
    gc.disable()
    try:
        started = time.process_time()
        function(*args, **kwargs)
        return time.process_time() - started
    finally:
        gc.enable()
