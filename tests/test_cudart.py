"""dynashape.trt.cudart without a GPU: page-locked memory against a fake CUDA runtime that keeps
the registered ranges the way the driver does (a second registration of a range is refused)."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from dynashape.trt import cudart


class FakeRuntime:
    """The few cuda.bindings.runtime calls page-locked memory uses."""

    cudaError_t = SimpleNamespace(cudaSuccess=0, cudaErrorHostMemoryAlreadyRegistered=712)
    cudaMemoryType = SimpleNamespace(cudaMemoryTypeUnregistered=0, cudaMemoryTypeHost=1)

    def __init__(self) -> None:
        self.ranges: dict[int, int] = {}  # start -> size

    def _owner(self, ptr: int) -> int | None:
        return next((s for s, n in self.ranges.items() if s <= ptr < s + n), None)

    def cudaHostRegister(self, ptr: int, size: int, flags: int) -> tuple[int]:
        if any(s < ptr + size and ptr < s + n for s, n in self.ranges.items()):
            return (self.cudaError_t.cudaErrorHostMemoryAlreadyRegistered,)
        self.ranges[ptr] = size
        return (0,)

    def cudaHostUnregister(self, ptr: int) -> tuple[int]:
        self.ranges.pop(ptr, None)
        return (0,)

    def cudaPointerGetAttributes(self, ptr: int) -> tuple[int, Any]:
        kind = self.cudaMemoryType.cudaMemoryTypeHost if self._owner(ptr) is not None else 0
        return 0, SimpleNamespace(type=kind)

    def cudaGetLastError(self) -> tuple[int]:
        return (0,)

    def cudaGetErrorName(self, err: int) -> tuple[int, bytes]:
        return 0, b"cudaErrorHostMemoryAlreadyRegistered"


@pytest.fixture
def fake_rt(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    rt = FakeRuntime()
    monkeypatch.setattr(cudart, "_import_runtime", lambda: (rt, None))
    return rt


def test_a_pinned_buffer_dropped_without_free_is_unregistered(fake_rt: FakeRuntime) -> None:
    buf = cudart.PinnedBuffer(10_000)
    assert len(fake_rt.ranges) == 1 and buf.nbytes == 12_288  # whole pages
    del buf
    gc.collect()
    # before the fix, the range stayed registered and the allocator's next block at the same
    # address could not be pinned (cudaErrorHostMemoryAlreadyRegistered on the H200 machine)
    assert fake_rt.ranges == {}
    for _ in range(3):
        cudart.PinnedBuffer(10_000)  # made and dropped at once: never refused
    gc.collect()
    assert fake_rt.ranges == {}


def test_free_unregisters_once_and_growing_re_registers(fake_rt: FakeRuntime) -> None:
    buf = cudart.PinnedBuffer(4096)
    first = buf.ptr
    assert buf.ensure(100) is False and list(fake_rt.ranges) == [first]
    assert buf.ensure(3 * 4096) is True and len(fake_rt.ranges) == 1 and buf.nbytes == 3 * 4096
    buf.free()
    buf.free()
    gc.collect()
    assert fake_rt.ranges == {} and buf.nbytes == 0


def test_pinned_empty_stays_pinned_while_the_array_lives(fake_rt: FakeRuntime) -> None:
    arr = cudart.pinned_empty((2, 3, 5), "float32")
    assert arr.shape == (2, 3, 5) and arr.dtype == np.float32
    gc.collect()
    assert cudart.is_pinned(arr) and cudart.is_pinned(arr[1]) and len(fake_rt.ranges) == 1
    del arr
    gc.collect()
    assert fake_rt.ranges == {}


def test_is_pinned_asks_the_first_and_the_last_byte(fake_rt: FakeRuntime) -> None:
    assert not cudart.is_pinned(np.zeros(1000, np.float32))  # ordinary memory
    assert not cudart.is_pinned(np.zeros(0, np.float32))
    host = np.zeros(4 * 4096, np.uint8)
    start = int(host.__array_interface__["data"][0])
    fake_rt.ranges[start] = 4096  # only the first page registered
    assert cudart.is_pinned(host[:4096])
    assert not cudart.is_pinned(host)  # starts pinned, ends outside: not safe to copy asynchronously
