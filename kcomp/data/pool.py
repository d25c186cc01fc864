"""Worker processes for `prep`'s decoding passes (DICOM -> PNG, JPEG -> image cache), with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from kcomp import console


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _init_worker() -> None:
    import signal

    import cv2

    cv2.setNumThreads(1)  # one image per process: OpenCV's own threads would only fight the other workers
    # Ctrl-C reaches the whole process group: let the main process cancel what is queued and wait for the images
    # in flight (each is written atomically or into its own rows), instead of every worker printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _fork_without_cv2_threads(pool: Any) -> None:
    """Fork every worker now, while OpenCV's thread pool is stopped. A child forked while the parent's pool exists
    (e.g. after `prep demo` drew its images with cv2) inherits its locks but not its threads, and hangs at its
    first cv2 call; the parent gets its threads back afterwards."""
    import cv2

    n = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        pool.submit(int).result()  # a fork pool starts all its processes at the first submit
    finally:
        cv2.setNumThreads(n)


class WorkerPool:
    """`workers` processes shared by several passes over the same files (0 = everything in this process).

    Where the OS has fork, workers are forked once, at the first submit and before any progress-bar thread runs,
    from a process that has already imported `preload` (the decoders): no per-worker start-up cost, and no
    re-import of the caller's main script (which spawn/forkserver would do). Elsewhere the default start method is
    used."""

    def __init__(self, workers: int, preload: Sequence[str] = ("cv2",)) -> None:
        self.workers = workers
        self.preload = tuple(preload)
        self._pool: Any = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)
            self._pool = None

    def _executor(self, n_jobs: int) -> Any:
        if self._pool is None:
            import importlib
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            for module in self.preload:  # once here, inherited by forked workers
                importlib.import_module(module)
            fork = "fork" in multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if fork else None)
            self._pool = ProcessPoolExecutor(min(self.workers, n_jobs), mp_context=ctx, initializer=_init_worker)
            if fork:
                _fork_without_cv2_threads(self._pool)
        return self._pool

    def map(self, fn: Callable[[Any], Any], jobs: list[Any], label: str, *, chunk: int = 1) -> list[Any]:
        """fn over jobs, results in order, with a progress bar in img/s. `chunk` > 1 batches cheap jobs (header
        reads) so inter-process messages do not dominate; decoding (ms to seconds an image) goes one by one, which
        balances the load best."""
        results: list[Any] = []
        if not jobs:
            return results
        if self.workers == 0:
            it: Any = map(fn, jobs)
        else:
            chunk = max(1, min(chunk, len(jobs) // (self.workers * 4)))
            it = self._executor(len(jobs)).map(fn, jobs, chunksize=chunk)
        with console.progress(len(jobs), label, unit="img") as bar:
            for r in it:
                results.append(r)
                bar.advance()
        return results
