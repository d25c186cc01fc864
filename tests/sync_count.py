"""Counting the operations that would make a CUDA device wait for the host, or the host for the device, while
running on the CPU (no GPU needed).

On a GPU the host queues kernels and runs ahead; an op whose result the host must read (`.item()`, `bool(t)`,
`nonzero`, boolean-mask indexing, `unique`, `.cpu()`/`.tolist()` of a device tensor) or a tensor built from host
values and copied to the device without pinned memory makes the host wait until the device has caught up, and the
device then idles while the host queues the next kernels. On a CPU the same ops run, so they can be counted.

Only tensors that live on the device on a GPU count: the model's parameters and buffers, the batch, the optimizer's
moments, and everything computed from them ("device" tensors, followed op by op). Tensors the code keeps on the host
on purpose (AdamW's step counters, mixup's CPU generator draws) are not device tensors, so reading them is free. A
tensor built from Python values (`torch.tensor([...])`, `x.new_tensor(...)`) inside the counted region is counted
once, when it first meets a device tensor: on a GPU it would have been copied there from pageable memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
# ops whose output size or value the host must know before it can go on
_SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
             aten.is_nonzero.default, aten.equal.default, aten._unique2.default, aten.unique_dim.default,
             aten.unique_consecutive.default, aten.repeat_interleave.Tensor, aten.bincount.default}
_INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
# Tensor methods that copy a device tensor to the host and wait for it
_HOST_READS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}


class SyncCounter(TorchDispatchMode):
    """`with SyncCounter(device_tensors) as c: ...`; then `c.counts` maps reasons to how often they happened."""

    def __init__(self, device_tensors: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self._device: dict[int, torch.Tensor] = {}
        self._lifted: dict[int, torch.Tensor] = {}
        self.counts: Counter[str] = Counter()
        for t in device_tensors:
            self._mark(t)
        self._reads = _HostReads(self)

    def _mark(self, t: torch.Tensor) -> None:
        self._device[id(t)] = t  # kept alive, so an id is never reused within the region

    def is_device(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self._device

    def __enter__(self) -> SyncCounter:
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._reads.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(self.is_device(t) for t in inputs)
        if on_device:
            if func in _SYNC_OPS:
                self.counts[func.overloadpacket.__name__] += 1
            elif func in _INDEX_OPS and any(t.dtype == torch.bool for t in tree_leaves(args[1:2])
                                            if isinstance(t, torch.Tensor)):
                self.counts["boolean-mask indexing"] += 1
            for t in inputs:
                if id(t) in self._lifted:
                    del self._lifted[id(t)]
                    self.counts["tensor built from host values"] += 1
        out = func(*args, **kwargs)
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if func is aten.lift_fresh.default:
            for t in outs:
                self._lifted[id(t)] = t
        elif on_device:
            for t in outs:
                self._mark(t)
        elif any(id(t) in self._lifted for t in inputs):  # a view or copy of a host-built tensor is one too
            for t in outs:
                self._lifted[id(t)] = t
        return out


class _HostReads(TorchFunctionMode):
    """`.tolist()`, `.numpy()`, `.cpu()` of a device tensor (on a CPU tensor they dispatch nothing). `.to(device)`
    cannot be told from `.to("cpu")` when the device is the CPU, so the code under test reads back with `.cpu()`."""

    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _HOST_READS and args and self.counter.is_device(args[0]):
            self.counter.counts[f"Tensor.{func.__name__}"] += 1
        return func(*args, **(kwargs or {}))


def device_tensors(*objs: Any) -> list[torch.Tensor]:
    """Every tensor a GPU run keeps on the device among modules, optimizers (their moments, not AdamW's host-side
    step counters), tensors and nested containers of tensors."""
    out: list[torch.Tensor] = []
    for obj in objs:
        if isinstance(obj, torch.nn.Module):
            out += [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                out += [v for k, v in state.items() if isinstance(v, torch.Tensor) and k != "step"]
        else:
            out += [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]
    return out
