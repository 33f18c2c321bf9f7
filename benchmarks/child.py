"""Running a measured step in a process of its own, so that its peak memory
(``VmHWM``) and its imports are its own."""

from __future__ import annotations

import multiprocessing
import queue as queue_module


def in_child(target, *args) -> tuple:
    """``target(*args, results)`` in a spawned process; what it put on
    ``results``. Exits naming ``target`` when the process dies first."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=target, args=(*args, results))
    process.start()
    while True:
        try:
            result = results.get(timeout=1)
            break
        except queue_module.Empty:  # still working, unless it died
            if not process.is_alive():
                raise SystemExit(
                    f"{target.__name__} failed (exit code {process.exitcode})"
                ) from None
    process.join()
    return result
