"""Large buffers kept from one call for the next, so that memory freed and allocated again is
not fresh pages.

A buffer of tens of megabytes that a call allocates and frees goes back to the system (glibc
serves it by ``mmap``); the next call's gets pages the kernel zero-fills on first touch, at about
2 microseconds per 4 KiB page: 100 ms for 200 MB on a 2-core AVX2 CPU, where writing the same
buffer again took 10 ms. A training step or an evaluation loop makes the same buffers on every
call, so the buffers a call is done with wait here, one per shape, for the next call of the same
shape (:data:`SPARE_BYTES` in all). :func:`xcorr.clear_cache` empties it.
"""

from __future__ import annotations

import threading

import torch

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
