# Copyright (c) rekd_mm contributors. All rights reserved.
"""Count the operations that make the host wait for the device.

On CUDA the host queues kernels and runs ahead; an operation whose result
the host needs (a tensor's value in Python, an output whose size depends on
the data, a copy to the CPU) waits until the device has drained its queue.
:class:`HostSyncCounter` records such operations as they are dispatched, so
a test can bound them per training step on any device: on CPU it counts the
operations that *would* synchronise on CUDA.
"""
from typing import List, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['HostSyncCounter', 'SYNC_OPS']

aten = torch.ops.aten

# Operations that read device data on the host, or whose output size depends
# on the data (the size has to come back to the host).
SYNC_OPS = {
    aten._local_scalar_dense.default,  # .item(), int(t), bool(t), float(t)
    aten.nonzero.default,
    aten.masked_select.default,
    aten.bincount.default,  # CUDA computes its length from input.max()
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.equal.default,
    aten.allclose.default,
}


def _is_bool_index(arg) -> bool:
    return isinstance(arg, (list, tuple)) and any(
        isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)
        for t in arg)


class HostSyncCounter(TorchDispatchMode):
    """A dispatch mode that records host-synchronising operations.

    Counted: :data:`SYNC_OPS`; boolean-mask indexing (``x[mask]``,
    ``x[mask] = v``: a ``nonzero`` inside the kernel); ``repeat_interleave``
    without ``output_size``; copies from a non-CPU device to the CPU.

    Args:
        cpu_as_device (bool): Count operations on CPU tensors too, as if the
            tensors were on an accelerator (the way to test on CPU what would
            synchronise on CUDA). Defaults to True. With False only
            operations on non-CPU tensors (and device-to-CPU copies) count.

    Example:
        >>> with HostSyncCounter() as counter:
        ...     model.loss(inputs, data_samples)
        >>> counter.count, counter.ops
    """

    def __init__(self, cpu_as_device: bool = True) -> None:
        super().__init__()
        self.cpu_as_device = cpu_as_device
        self.ops: List[str] = []

    @property
    def count(self) -> int:
        """int: Host synchronisations recorded so far."""
        return len(self.ops)

    def _on_device(self, args) -> bool:
        if self.cpu_as_device:
            return True
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        return any(t.device.type != 'cpu' for t in tensors)

    def _classify(self, func, args, kwargs) -> Optional[str]:
        if func in SYNC_OPS:
            return str(func) if self._on_device(args) else None
        packet = func.overloadpacket
        if packet in (aten.index, aten.index_put, aten.index_put_,
                      aten._index_put_impl_) and len(args) > 1 \
                and _is_bool_index(args[1]):
            return f'{func} (boolean mask)' if self._on_device(
                args[:1]) else None
        if packet is aten.repeat_interleave and kwargs.get(
                'output_size') is None and len(args) and isinstance(
                    args[0],
                    torch.Tensor) and args[0].dtype in (torch.long, torch.int):
            return f'{func} (no output_size)' if self._on_device(
                args[:1]) else None
        if packet in (aten._to_copy, aten.copy_):
            src = args[1] if packet is aten.copy_ else args[0]
            dst_cpu = (
                args[0].device.type == 'cpu' if packet is aten.copy_ else str(
                    kwargs.get('device', src.device)) == 'cpu')
            if isinstance(src, torch.Tensor) and src.device.type != 'cpu' \
                    and dst_cpu:
                return f'{func} (device to CPU)'
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = self._classify(func, args, kwargs)
        if what is not None:
            self.ops.append(what)
        return func(*args, **kwargs)
