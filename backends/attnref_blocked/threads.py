"""Run a kernel's tasks on a few worker threads, for one call only.

NumPy's ufuncs and BLAS calls release the GIL, so query blocks run in parallel
on plain Python threads. The workers belong to the call: they are started for
it and joined before it returns, also when a task fails (the others stop
taking tasks, and the first failure is raised). Nothing here touches
process-wide state: no thread pool outlives a call, and no library setting
(such as BLAS's thread count) is changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

from attnref_blocked.numerics import quiet

__all__ = ["run_tasks"]

T = TypeVar("T")


def run_tasks(
    xp: Any, tasks: Sequence[T], work: Callable[[T, Any], None], state: Callable[[], Any], threads: int
) -> None:
    """Call ``work(task, scratch)`` for every task, ``scratch = state()`` once per worker.

    With ``threads <= 1`` (or a single task) everything runs on the calling
    thread; otherwise ``threads`` workers pull tasks from one queue, the most
    expensive first (the order of ``tasks``).
    """
    if threads <= 1 or len(tasks) <= 1:
        scratch = state()
        with quiet(xp):
            for task in tasks:
                work(task, scratch)
        return
    queue = iter(tasks)
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        scratch = state()
        with quiet(xp):  # NumPy's error state is per thread
            while not stop.is_set():
                with lock:
                    task = next(queue, None)
                if task is None:
                    return
                try:
                    work(task, scratch)
                except BaseException:
                    stop.set()  # the other workers finish their current task and stop
                    raise

    workers = min(threads, len(tasks))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="attnref-blocked")
    try:
        futures = [pool.submit(worker) for _ in range(workers)]
        wait(futures)
    except BaseException:  # e.g. KeyboardInterrupt while waiting
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True)  # every worker is joined before the call returns
    for future in futures:
        future.result()  # the first failure, if any
