"""Large buffers kept from one call for the next, so that memory freed and allocated again is
not fresh pages.

A buffer of tens of megabytes that a call allocates and frees goes back to the system (glibc
serves it by ``mmap``); the next call's gets pages the kernel zero-fills on first touch, at about
2 microseconds per 4 KiB page: 100 ms for 200 MB on a 2-core AVX2 CPU, where writing the same
buffer again took 10 ms. A training step or an evaluation loop makes the same buffers on every
call, so the buffers a call is done with wait here, one per shape, for the next call of the same
shape (:data:`SPARE_BYTES` in all). :func:`xcorr.clear_cache` empties it.

Results handed to the caller are the same story, one call later: a training step drops its cost
volume, and the next step's volume of the same size is fresh pages again (GwcNet's 126 MB volume:
30 700 faults, half of its forward pass). :data:`OUTPUTS` makes large results in memory that it
takes back once nothing refers to them any more.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import numpy as np
import torch

from ._tracing import tracing

#: Most bytes of buffers kept waiting for a next call; a buffer that would pass it is freed.
SPARE_BYTES = 1 << 30


class Spares:
    """Buffers waiting for a next call, by shape, dtype and device."""

    def __init__(self) -> None:
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A buffer of ``shape`` (its contents arbitrary): a waiting one, else a new one."""
        key = (tuple(shape), dtype, torch.device(device))
        with self._lock:
            waiting = self._free.get(key)
            if waiting:
                buffer = waiting.pop()
                self._bytes -= buffer.nbytes
                return buffer
        return torch.empty(shape, dtype=dtype, device=device)

    def give(self, buffers: list[torch.Tensor]) -> None:
        """Keep ``buffers`` (no longer used by their caller) for a next call, within
        :data:`SPARE_BYTES`."""
        with self._lock:
            for buffer in buffers:
                if self._bytes + buffer.nbytes > SPARE_BYTES:
                    continue
                key = (tuple(buffer.shape), buffer.dtype, buffer.device)
                self._free.setdefault(key, []).append(buffer)
                self._bytes += buffer.nbytes

    def clear(self) -> None:
        """Free every waiting buffer."""
        with self._lock:
            self._free.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return sum(len(waiting) for waiting in self._free.values())


#: The buffers of this process.
SPARES = Spares()


#: Bytes from which a result is made by :data:`OUTPUTS` (smaller ones come from the allocator's
#: heap, whose freed memory the next call reuses).
OUTPUT_MIN_BYTES = 16 << 20

#: Most bytes of memory :data:`OUTPUTS` holds, results in use included; past it, results are
#: plain ``torch.empty``.
OUTPUT_BYTES = 1 << 30

#: Alignment of a result's first element in its buffer (PyTorch's own CPU allocations').
_ALIGNMENT = 64

#: The dtypes that numpy holds (the buffers are numpy arrays: see :class:`Outputs`).
_NUMPY_DTYPES = (torch.float16, torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8)


class Outputs:
    """Memory for large results, made again in the same memory once no tensor holds it.

    A result is ``torch.from_numpy`` of a view of a buffer (a numpy array kept here): every tensor
    made from it (views, autograd's saved tensors) shares its storage, which holds that view, so
    the view lives exactly as long as any of them; a weak reference to it says when the buffer
    is free again. Buffers are matched by size in bytes.
    """

    def __init__(self) -> None:
        self._buffers: list[tuple[np.ndarray, Any]] = []  # (buffer, weak reference to its result's view)
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An uninitialised tensor of ``shape``: in a free buffer of its size where there is one,
        on a CPU, from :data:`OUTPUT_MIN_BYTES` and within :data:`OUTPUT_BYTES` (else
        ``torch.empty``, as while tracing)."""
        if tracing() or torch.device(device).type != "cpu" or dtype not in _NUMPY_DTYPES:
            return torch.empty(shape, dtype=dtype, device=device)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < OUTPUT_MIN_BYTES:
            return torch.empty(shape, dtype=dtype, device=device)
        size = nbytes + _ALIGNMENT
        with self._lock:
            buffer = self._free(size)
            if buffer is None:
                held = sum(b.nbytes for b, _ in self._buffers)
                while held + size > OUTPUT_BYTES and (idle := self._idle()) is not None:
                    held -= self._buffers.pop(idle)[0].nbytes
                if held + size > OUTPUT_BYTES:
                    return torch.empty(shape, dtype=dtype, device=device)
                buffer = np.empty(size, dtype=np.uint8)
            start = -buffer.ctypes.data % _ALIGNMENT
            view = buffer[start : start + nbytes]
            self._buffers.append((buffer, weakref.ref(view)))
        return torch.from_numpy(view).view(dtype).view(shape)

    def _free(self, size: int) -> np.ndarray | None:
        """A free buffer of ``size`` bytes, taken out of the list (the lock held)."""
        for i, (buffer, result) in enumerate(self._buffers):
            if buffer.nbytes == size and result() is None:
                return self._buffers.pop(i)[0]
        return None

    def _idle(self) -> int | None:
        """The index of the first free buffer, if any (the lock held)."""
        return next((i for i, (_, result) in enumerate(self._buffers) if result() is None), None)

    def clear(self) -> None:
        """Forget every buffer (results in use keep theirs)."""
        with self._lock:
            self._buffers.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._buffers)


#: The results' memory of this process.
OUTPUTS = Outputs()
