"""Post-processing of model outputs off the model's critical path.

On a GPU, `outputs.cpu()` in the prediction loop is a host sync per batch: the GPU idles while the host waits for the
copy and then resizes/quantises/writes, and only then is the next batch queued. Here the loop only starts an
asynchronous copy into pinned memory and records an event; a worker thread waits for the event and runs the host
work (OpenCV releases the GIL), while the loop has already queued the next batch. On CPU the copy is a no-op and the
thread overlaps host work with the model's own threads. Results come back in submission order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

_DONE = object()


def to_host_async(t: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """(host tensor, event): a CUDA tensor's copy into pinned memory, queued on the stream of the tensor's own
    device, and the event that marks it landed (None on the CPU, where the tensor is its own host copy). The host
    must wait for the event before reading: the copy runs after whatever that stream has queued before it."""
    if t.device.type != "cuda":
        return t.detach(), None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)  # queued on the current stream of t's device
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(t.device))  # that stream, not cuda:0's: t may live on another GPU
    return host, event


class HostStage:
    """`submit(tensor)` per batch, `results()` once at the end: the concatenation of `fn(array)` over batches.

    `depth` bounds the batches in flight (pinned buffers held), so a slow host stage slows the loop instead of
    growing memory."""

    def __init__(self, fn: Callable[[Any], list[Any]], *, depth: int = 2) -> None:
        self.fn = fn
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._out: list[Any] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kcomp-host-stage", daemon=True)
        self._thread.start()

    def submit(self, t: torch.Tensor) -> None:
        if self._error is not None:
            self._raise()
        self._queue.put(to_host_async(t))

    def results(self) -> list[Any]:
        self._queue.put(_DONE)
        self._thread.join()
        if self._error is not None:
            self._raise()
        return self._out

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._error is not None:
                continue  # drain, so a blocked submit() can return and see the error
            t, event = item
            try:
                if event is not None:
                    event.synchronize()
                self._out.extend(self.fn(t.numpy()))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = e

    def _raise(self) -> None:
        assert self._error is not None
        raise self._error
