"""The CUDA side of running engines: streams, device and pinned memory, events and CUDA graphs.

Everything goes through cuda-python's runtime bindings (``cuda.bindings.runtime``, the package
``cuda-bindings``), imported on first use, so importing this module costs nothing on a machine
without CUDA. Device arrays from other libraries (PyTorch CUDA tensors, CuPy arrays, Numba) are
read through the ``__cuda_array_interface__`` protocol, or DLPack through PyTorch/CuPy when only
that is offered; :class:`DeviceArray` is our own device array and exposes the same protocol, so
``torch.as_tensor(arr, device="cuda")`` and ``cupy.asarray(arr)`` take it without a copy.

Pinned (page-locked) host memory is a page-aligned NumPy array registered with
``cudaHostRegister``: NumPy owns the bytes, CUDA only locks them, and no pointer is ever turned
into an array by hand.
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from dynashape.errors import DynashapeError

log = logging.getLogger(__name__)

PAGE = 4096
#: DLPack device types that are CUDA memory (kDLCUDA, kDLCUDAHost is host memory, kDLCUDAManaged)
_DLPACK_CUDA = (2, 13)
#: ``__cuda_array_interface__`` stream values with a special meaning (v3 of the protocol)
_LEGACY_STREAM, _PER_THREAD_STREAM = 1, 2


class CudaError(DynashapeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


@functools.lru_cache(maxsize=1)
def _import_runtime() -> tuple[Any, str | None]:
    try:
        from cuda.bindings import runtime

        return runtime, None
    except ImportError:
        pass
    try:  # cuda-python < 12.6 spelled it this way
        from cuda import cudart

        return cudart, None
    except ImportError as exc:
        return None, (
            f"cuda-python is needed to run engines ({exc}); install it: pip install 'cuda-bindings>=12'"
        )


def cuda_available() -> str | None:
    """None when cuda-python imports and a GPU answers, else one line saying why not."""
    rt, reason = _import_runtime()
    if rt is None:
        return reason
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess or count < 1:
        return f"no usable GPU ({_error_name(rt, err) if err != rt.cudaError_t.cudaSuccess else 'none found'})"
    return None


def runtime() -> Any:
    """``cuda.bindings.runtime``, or a DynashapeError saying how to get it."""
    rt, reason = _import_runtime()
    if rt is None:
        raise DynashapeError(reason or "cuda-python is not installed")
    return rt


def _error_name(rt: Any, err: Any) -> str:
    try:
        _code, name = rt.cudaGetErrorName(err)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # an error code the bindings do not know
        return str(err)


# enum members looked up once per runtime: reading one costs a Python-level lookup on older
# Pythons, and the per-call path makes several CUDA calls
@functools.lru_cache(maxsize=4)
def _success(rt: Any) -> Any:
    return rt.cudaError_t.cudaSuccess


@functools.lru_cache(maxsize=4)
def _copy_kinds(rt: Any) -> tuple[Any, Any, Any]:
    """cudaMemcpyKind's host-to-device, device-to-host and device-to-device."""
    kind = rt.cudaMemcpyKind
    return kind.cudaMemcpyHostToDevice, kind.cudaMemcpyDeviceToHost, kind.cudaMemcpyDeviceToDevice


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python result ``(err, *values)``: the value(s), or CudaError naming ``what``."""
    is_tuple = type(result) is tuple
    err = result[0] if is_tuple else result
    if err != _success(runtime()):
        raise CudaError(f"CUDA {what} failed: {_error_name(runtime(), err)}")
    if not is_tuple or len(result) == 1:
        return None
    return result[1] if len(result) == 2 else result[1:]


def clear_error() -> None:
    """Reset the runtime's last error (after a failure we recovered from)."""
    runtime().cudaGetLastError()


# --------------------------------------------------------------------------- streams and events


class Stream:
    """A non-blocking CUDA stream (it does not wait for the legacy default stream)."""

    def __init__(self) -> None:
        rt = runtime()
        self._handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "stream creation")
        self.ptr = int(self._handle)

    def synchronize(self) -> None:
        check(runtime().cudaStreamSynchronize(self._handle), "stream synchronize")

    def wait_for(self, event: Event) -> None:
        """Later work on this stream waits until ``event`` completes (no host wait)."""
        check(runtime().cudaStreamWaitEvent(self._handle, event.handle, 0), "stream wait")

    def wait_for_stream(self, other: int) -> None:
        """Later work on this stream waits for what is queued on stream ``other`` (a handle) now."""
        if other == self.ptr:
            return
        ev = Event(timing=False)
        try:
            ev.record(other)
            self.wait_for(ev)
        finally:
            ev.free()

    def free(self) -> None:
        if self._handle is not None:
            runtime().cudaStreamDestroy(self._handle)
            self._handle = None
            self.ptr = 0

    @property
    def handle(self) -> Any:
        return self._handle


def _stream_handle(stream: Stream | int) -> Any:
    rt = runtime()
    if isinstance(stream, Stream):
        return stream.handle
    return rt.cudaStream_t(int(stream))


class Event:
    """A CUDA event; ``timing=False`` makes a lighter one for ordering only."""

    def __init__(self, timing: bool = True) -> None:
        rt = runtime()
        flags = rt.cudaEventDefault if timing else rt.cudaEventDisableTiming
        self.handle = check(rt.cudaEventCreateWithFlags(flags), "event creation")

    def record(self, stream: Stream | int) -> None:
        check(runtime().cudaEventRecord(self.handle, _stream_handle(stream)), "event record")

    def synchronize(self) -> None:
        check(runtime().cudaEventSynchronize(self.handle), "event synchronize")

    def elapsed_ms(self, start: Event) -> float:
        """Milliseconds from ``start`` to this event (both recorded and completed)."""
        return float(check(runtime().cudaEventElapsedTime(start.handle, self.handle), "event timing"))

    def free(self) -> None:
        if self.handle is not None:
            runtime().cudaEventDestroy(self.handle)
            self.handle = None


# --------------------------------------------------------------------------- memory


class DeviceBuffer:
    """Device memory that grows on demand and never shrinks (``ensure``)."""

    def __init__(self, nbytes: int = 0) -> None:
        self.ptr = 0
        self.nbytes = 0
        if nbytes:
            self.ensure(nbytes)

    def ensure(self, nbytes: int) -> bool:
        """At least ``nbytes`` (at least 1 byte); True when this (re)allocated."""
        nbytes = max(1, int(nbytes))
        if nbytes <= self.nbytes:
            return False
        self.free()
        self.ptr = int(check(runtime().cudaMalloc(nbytes), f"allocation of {nbytes} bytes"))
        self.nbytes = nbytes
        return True

    def free(self) -> None:
        if self.ptr:
            runtime().cudaFree(self.ptr)
        self.ptr = 0
        self.nbytes = 0


class PinnedBuffer:
    """Page-locked host memory: a page-aligned NumPy byte array registered with CUDA.

    The registration is undone when the bytes are freed, by ``free()`` or, for a buffer dropped
    without it, when the last array on them goes: memory returned to the allocator while still
    registered would make a later registration at the same address fail
    (``cudaErrorHostMemoryAlreadyRegistered``)."""

    def __init__(self, nbytes: int = 0) -> None:
        self._base: np.ndarray | None = None
        self._unpin: Any = None
        self.array = np.empty(0, np.uint8)  # the registered, page-aligned bytes
        self.nbytes = 0
        self.ptr = 0  # of ``array``'s first byte (kept: the per-call path reads it)
        if nbytes:
            self.ensure(nbytes)

    def ensure(self, nbytes: int) -> bool:
        """At least ``nbytes``; True when this (re)allocated."""
        if nbytes <= self.nbytes:
            return False
        self.free()
        size = -(-max(1, int(nbytes)) // PAGE) * PAGE
        base = np.empty(size + PAGE, np.uint8)
        offset = (-int(base.__array_interface__["data"][0])) % PAGE
        array = base[offset : offset + size]
        ptr = int(array.__array_interface__["data"][0])
        check(runtime().cudaHostRegister(ptr, size, 0), f"pinning {size} bytes of host memory")
        # NumPy calls weak-reference callbacks before it frees an array's bytes
        self._unpin = weakref.finalize(base, _unregister, ptr)
        self._unpin.atexit = False  # at exit the CUDA context may be gone already
        self._base, self.array, self.nbytes, self.ptr = base, array, size, ptr
        return True

    def view(self, shape: Sequence[int], dtype: str | np.dtype[Any]) -> np.ndarray:
        dt = np.dtype(dtype)
        count = math.prod(shape)
        return self.array[: count * dt.itemsize].view(dt).reshape(tuple(shape))

    def free(self) -> None:
        """Unregister and drop the bytes now (arrays still viewing them stay valid, unpinned)."""
        if self._unpin is not None:
            self._unpin()
        self._unpin = None
        self._base = None
        self.array = np.empty(0, np.uint8)
        self.nbytes = 0
        self.ptr = 0


def _unregister(ptr: int) -> None:
    rt, _reason = _import_runtime()
    if rt is not None:
        rt.cudaHostUnregister(ptr)


def pinned_empty(shape: Sequence[int], dtype: str | np.dtype[Any] = "float32") -> np.ndarray:
    """An uninitialized NumPy array in page-locked host memory (like ``torch.empty(...,
    pin_memory=True)``): ``Engine.infer`` copies such an input straight to the device, without
    staging it, and copies straight out of it asynchronously. Unpinned when the array is freed."""
    dt = np.dtype(dtype)
    return PinnedBuffer(max(1, math.prod(shape) * dt.itemsize)).view(shape, dt)


def _host_ptr(arr: np.ndarray) -> int:
    return int(arr.__array_interface__["data"][0])


def is_pinned(arr: np.ndarray) -> bool:
    """True when all of ``arr``'s bytes are page-locked host memory CUDA knows (ours, from
    ``pinned_empty``, ``torch``'s ``pin_memory()``, ``cudaHostAlloc``): the first and last byte
    are asked, as an array may start inside a registered range and end outside it."""
    nbytes = arr.nbytes
    if not nbytes:
        return False
    rt = runtime()
    ptr = _host_ptr(arr)
    for p in (ptr, ptr + nbytes - 1):
        err, attrs = rt.cudaPointerGetAttributes(p)
        if err != rt.cudaError_t.cudaSuccess:
            rt.cudaGetLastError()  # an unknown pointer is an answer, not an error to keep
            return False
        if attrs.type != rt.cudaMemoryType.cudaMemoryTypeHost:
            return False
    return True


def copy_htod(dst: int, src: np.ndarray | int, nbytes: int, stream: Stream) -> None:
    """Queue a host-to-device copy on ``stream`` (asynchronous when ``src`` is pinned)."""
    rt = runtime()
    ptr = _host_ptr(src) if isinstance(src, np.ndarray) else int(src)
    check(rt.cudaMemcpyAsync(dst, ptr, nbytes, _copy_kinds(rt)[0], stream._handle), "host-to-device copy")


def copy_dtoh(dst: np.ndarray | int, src: int, nbytes: int, stream: Stream) -> None:
    """Queue a device-to-host copy on ``stream`` (asynchronous when ``dst`` is pinned)."""
    rt = runtime()
    ptr = _host_ptr(dst) if isinstance(dst, np.ndarray) else int(dst)
    check(rt.cudaMemcpyAsync(ptr, src, nbytes, _copy_kinds(rt)[1], stream._handle), "device-to-host copy")


def copy_dtod(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    rt = runtime()
    check(rt.cudaMemcpyAsync(dst, src, nbytes, _copy_kinds(rt)[2], stream._handle), "device-to-device copy")


# --------------------------------------------------------------------------- device arrays


def _c_strides(shape: Sequence[int], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= max(1, int(d))
    return tuple(reversed(strides))


class DeviceFeed(NamedTuple):
    """A contiguous device array handed to us: where it is, its shape and type, and the stream
    its producer last wrote it on (``None``: already complete)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    stream: int | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@functools.lru_cache(maxsize=64)
def _dtype(typestr: str) -> np.dtype[Any]:
    return np.dtype(typestr)


def _from_dlpack(obj: Any) -> Any:
    """A CUDA array with ``__cuda_array_interface__`` made from a DLPack-only object (PyTorch or
    CuPy does the conversion; without either, a clear error)."""
    try:
        import torch

        return torch.from_dlpack(obj)
    except ImportError:
        pass
    try:
        import cupy

        return cupy.from_dlpack(obj)
    except ImportError:
        raise DynashapeError(
            f"a {type(obj).__name__} on the GPU offers only DLPack; install PyTorch or CuPy to pass it, "
            "or pass an object with __cuda_array_interface__"
        ) from None


def device_feed(obj: Any, what: str = "array") -> DeviceFeed | None:
    """``obj`` as a DeviceFeed when it lives in CUDA memory, None when it is a host array.

    Reads ``__cuda_array_interface__`` (PyTorch CUDA tensors, CuPy, Numba, our DeviceArray); an
    object offering only DLPack on a CUDA device goes through PyTorch/CuPy first. A
    non-contiguous device array is refused (we do not copy on the device behind the caller's back).
    """
    if isinstance(obj, np.ndarray):
        return None
    if type(obj) is DeviceArray:  # ours: contiguous by construction, nothing to parse (the per-call path)
        return DeviceFeed(obj.ptr, obj.shape, obj.dtype, obj.stream)
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None:
        dev = getattr(obj, "__dlpack_device__", None)
        if dev is None or not callable(dev):
            return None
        try:
            kind = int(dev()[0])
        except Exception:  # a __dlpack_device__ that does not answer: treat as host
            return None
        if kind not in _DLPACK_CUDA:
            return None
        cai = getattr(_from_dlpack(obj), "__cuda_array_interface__", None)
        if cai is None:
            raise DynashapeError(f"{what}: cannot read the device array {type(obj).__name__}")
    try:
        shape = tuple(int(d) for d in cai["shape"])
        dtype = _dtype(cai["typestr"])
        ptr = int(cai["data"][0])
    except (KeyError, TypeError, ValueError) as exc:
        raise DynashapeError(f"{what}: malformed __cuda_array_interface__ ({exc})") from None
    if cai.get("mask") is not None:
        raise DynashapeError(f"{what}: masked device arrays are not supported")
    strides = cai.get("strides")
    if strides is not None and math.prod(shape) > 1:
        want = _c_strides(shape, dtype.itemsize)
        if any(int(s) != w for s, w, d in zip(strides, want, shape, strict=True) if d > 1):
            raise DynashapeError(
                f"{what}: the device array is not contiguous (strides {tuple(strides)}); pass a "
                "contiguous one (torch: .contiguous(), CuPy: cupy.ascontiguousarray)"
            )
    if ptr == 0 and math.prod(shape) > 0:
        raise DynashapeError(f"{what}: the device array has a null pointer")
    stream = cai.get("stream")
    return DeviceFeed(ptr, shape, dtype, None if stream in (None, 0) else int(stream))


class DeviceArray:
    """A contiguous array in device memory, exposing ``__cuda_array_interface__`` (v3).

    Either it owns its memory (``DeviceArray.empty``, ``from_numpy``) or it is a view of an
    engine's output buffer (``Engine.infer(..., device_outputs=True)``), valid until the engine's
    next call; ``stream`` is the stream that writes it, so consumers order themselves after it.
    """

    def __init__(self, ptr: int, shape: Sequence[int], dtype: str | np.dtype[Any], *,
                 stream: int | None = None, owner: Any = None) -> None:
        self.ptr = int(ptr)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.stream = stream
        self._owner = owner

    @classmethod
    def view(cls, ptr: int, shape: tuple[int, ...], dtype: np.dtype[Any], stream: int | None,
             owner: Any) -> DeviceArray:
        """A view of memory someone else owns (no conversions: the per-call path)."""
        arr = cls.__new__(cls)
        arr.ptr, arr.shape, arr.dtype, arr.stream, arr._owner = ptr, shape, dtype, stream, owner
        return arr

    @classmethod
    def empty(cls, shape: Sequence[int], dtype: str | np.dtype[Any]) -> DeviceArray:
        dt = np.dtype(dtype)
        buf = DeviceBuffer(math.prod(shape) * dt.itemsize)
        return cls(buf.ptr, shape, dt, owner=buf)

    @classmethod
    def from_numpy(cls, arr: np.ndarray, stream: Stream | None = None) -> DeviceArray:
        host = np.ascontiguousarray(arr)
        out = cls.empty(host.shape, host.dtype)
        own = stream or Stream()
        try:
            copy_htod(out.ptr, host, host.nbytes, own)
            own.synchronize()
        finally:
            if stream is None:
                own.free()
        return out

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        cai: dict[str, Any] = {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "strides": None,
            "version": 3,
        }
        if self.stream is not None:
            cai["stream"] = self.stream
        return cai

    def to_numpy(self) -> np.ndarray:
        """A host copy (waits for the writing stream first)."""
        host = np.empty(self.shape, self.dtype)
        if self.nbytes:
            check(runtime().cudaDeviceSynchronize() if self.stream is None else
                  runtime().cudaStreamSynchronize(runtime().cudaStream_t(self.stream)), "synchronize")
            rt = runtime()
            check(rt.cudaMemcpy(_host_ptr(host), self.ptr, self.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost),
                  "device-to-host copy")
        return host

    def free(self) -> None:
        """Free owned memory now (a view frees nothing)."""
        if isinstance(self._owner, DeviceBuffer):
            self._owner.free()
        self._owner = None

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, ptr=0x{self.ptr:x})"


# --------------------------------------------------------------------------- CUDA graphs


class CaptureError(DynashapeError):
    """Capturing work into a CUDA graph failed (the work itself may still run uncaptured)."""


class Graph:
    """An instantiated CUDA graph (``cudaGraphExec_t``)."""

    def __init__(self, exec_handle: Any) -> None:
        self.handle = exec_handle

    def launch(self, stream: Stream) -> None:
        check(runtime().cudaGraphLaunch(self.handle, stream.handle), "graph launch")

    def free(self) -> None:
        if self.handle is not None:
            runtime().cudaGraphExecDestroy(self.handle)
            self.handle = None


def capture_graph(stream: Stream, work: Callable[[], bool]) -> Graph:
    """Record what ``work()`` queues on ``stream`` into a graph and instantiate it.

    ``work`` returns False when it failed; the capture is always ended, so the stream is usable
    afterwards, and any failure (``work`` refused, an operation illegal while capturing, an
    instantiation error) is a CaptureError.
    """
    rt = runtime()
    check(rt.cudaStreamBeginCapture(stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
          "begin graph capture")
    ok, reason = False, "the captured work failed"
    try:
        ok = bool(work())
    except Exception as exc:  # TensorRT or a callback raised inside the capture
        reason = f"{type(exc).__name__}: {exc}"
    err, graph = rt.cudaStreamEndCapture(stream.handle)
    try:
        if not ok:
            raise CaptureError(f"CUDA graph capture: {reason}")
        if err != rt.cudaError_t.cudaSuccess:
            raise CaptureError(f"CUDA graph capture failed: {_error_name(rt, err)}")
        err, exec_handle = rt.cudaGraphInstantiate(graph, 0)
        if err != rt.cudaError_t.cudaSuccess:
            raise CaptureError(f"CUDA graph instantiation failed: {_error_name(rt, err)}")
        return Graph(exec_handle)
    except CaptureError:
        rt.cudaGetLastError()  # do not leave the failure sticky for the next call
        raise
    finally:
        if graph is not None and int(graph):
            rt.cudaGraphDestroy(graph)


class GraphCache:
    """At most ``capacity`` graphs by key, least recently used evicted (and freed) first; keys whose
    capture failed are remembered so that they are not retried on every call."""

    def __init__(self, capacity: int = 16) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._graphs: OrderedDict[Hashable, Any] = OrderedDict()
        self.failed: dict[Hashable, str] = {}
        self.captures = 0
        self.evictions = 0

    def get(self, key: Hashable) -> Any:
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
        return graph

    def put(self, key: Hashable, graph: Any) -> None:
        old = self._graphs.pop(key, None)
        if old is not None and old is not graph:
            old.free()
        self._graphs[key] = graph
        self.captures += 1
        while len(self._graphs) > self.capacity:
            _, evicted = self._graphs.popitem(last=False)
            evicted.free()
            self.evictions += 1

    def fail(self, key: Hashable, reason: str) -> None:
        self.failed[key] = reason

    def clear(self) -> None:
        """Free every graph (their baked-in addresses are about to change)."""
        for graph in self._graphs.values():
            graph.free()
        self._graphs.clear()

    def keys(self) -> list[Hashable]:
        return list(self._graphs)

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._graphs))


# --------------------------------------------------------------------------- bandwidth


@dataclass(frozen=True)
class CopyBandwidth:
    """Pinned host<->device copy speed in GB/s (1e9 bytes per second), measured with events."""

    h2d_gbps: float
    d2h_gbps: float
    nbytes: int

    def bound_ms(self, h2d_bytes: int, d2h_bytes: int) -> float:
        """The least time the copies of one call can take at these speeds."""
        return (h2d_bytes / (self.h2d_gbps * 1e9) + d2h_bytes / (self.d2h_gbps * 1e9)) * 1e3

    def to_json(self) -> Mapping[str, Any]:
        return {"h2d_gbps": self.h2d_gbps, "d2h_gbps": self.d2h_gbps, "nbytes": self.nbytes}


def measure_copy_bandwidth(nbytes: int = 64 << 20, repeats: int = 10) -> CopyBandwidth:
    """Median pinned H2D and D2H bandwidth for copies of ``nbytes``."""
    host, dev, stream = PinnedBuffer(nbytes), DeviceBuffer(nbytes), Stream()
    start, end = Event(), Event()
    try:
        host.array[:] = 1
        speeds: dict[str, list[float]] = {"h2d": [], "d2h": []}
        for i in range(repeats + 1):
            for kind in ("h2d", "d2h"):
                start.record(stream)
                if kind == "h2d":
                    copy_htod(dev.ptr, host.ptr, nbytes, stream)
                else:
                    copy_dtoh(host.ptr, dev.ptr, nbytes, stream)
                end.record(stream)
                end.synchronize()
                if i:  # the first round warms up
                    speeds[kind].append(nbytes / (end.elapsed_ms(start) * 1e-3) / 1e9)
        return CopyBandwidth(float(np.median(speeds["h2d"])), float(np.median(speeds["d2h"])), nbytes)
    finally:
        start.free()
        end.free()
        stream.free()
        dev.free()
        host.free()
