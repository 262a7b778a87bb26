"""CUDA engine: thin wrappers over the ``*_cuda`` functions of ``llsh_index._C``.

Inputs are torch CUDA tensors; CuPy arrays (anything with ``__dlpack__`` or
``__cuda_array_interface__`` on a CUDA device) are taken without a copy and without a host round
trip, ordered after the stream their producer names (DLPack, or the interface's v3 ``stream``).  Outputs are torch CUDA tensors with the dtypes and shapes of the CPU engine
(``_C.build_tables_cpu`` / ``_C.lookup_cpu``).  Every kernel runs on torch's current stream of the
inputs' device; every buffer (outputs and scratch) comes from torch's caching allocator, so the
native code never allocates.  The only host synchronisations are the two inside
``build_tables`` (a validation flag, then the number of buckets, needed to size the outputs).

    codes, keys = binarize(logits, from_logits=True)          # [M, b, r] -> [M, b, r], [M, b]
    tables = build_tables(keys_bn, codes_bnr, ids_bn)          # dict of the sorted layout
    dist = lookup(tables, n_items, q_codes, q_keys, mode=0, miss_value=float("inf"))   # [M, b]

Set ``LLSH_CUDA_POISON=1`` (or call ``set_poison(True)``) to fill every buffer with NaN / 0xFF
before the kernels run, so that an element a kernel fails to write shows up in tests.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple, Union

import torch

from ._engine import MODES
from .errors import (ConfigError, CudaUnavailableError, DeviceMismatchError, InvalidDTypeError,
                     InvalidInputError)

TABLE_KEYS = ("keys", "table_start", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm")
_NATIVE = ("binarize_cuda", "build_tables_cuda_temp_bytes", "build_tables_cuda_sort", "build_tables_cuda_finish",
           "lookup_cuda_temp_bytes", "lookup_cuda")
_KEY_DTYPES = (torch.uint64, torch.int64)

_poison = os.environ.get("LLSH_CUDA_POISON", "") not in ("", "0")


def set_poison(flag: bool) -> bool:
    """Poisons (NaN / 0xFF) every output and scratch buffer before the kernels run; returns the old flag."""
    global _poison
    old, _poison = _poison, bool(flag)
    return old


def _native():
    """llsh_index._C, imported lazily, checked to have the CUDA engine."""
    try:
        from . import _C
    except ImportError as e:  # pragma: no cover - a broken install
        raise CudaUnavailableError(f"llsh_index CUDA engine: the native module llsh_index._C does not import: {e}")
    if not all(hasattr(_C, f) for f in _NATIVE):
        why = _C.cuda_status()[2] if hasattr(_C, "cuda_status") else "no CUDA functions in llsh_index._C"
        raise CudaUnavailableError(
            f"llsh_index CUDA engine unavailable: {why}. Rebuild with LLSH_WITH_CUDA=ON "
            "(e.g. `LLSH_WITH_CUDA=ON pip install -e .`).")
    return _C


def available() -> bool:
    """True when the CUDA functions are built, a device is visible and torch has CUDA."""
    try:
        C = _native()
    except CudaUnavailableError:
        return False
    return bool(C.cuda_status()[1] > 0 and torch.cuda.is_available())


# ----------------------------------------------------------------------------------------- helpers
def _as_tensor(x, name: str) -> torch.Tensor:
    """A torch CUDA tensor viewing x (torch tensor or CuPy-like array), never a host copy."""
    if isinstance(x, torch.Tensor):
        t = x
    elif hasattr(x, "__cuda_array_interface__") or (hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__")):
        # Where the data lives, asked before any conversion: torch.from_dlpack aborts the process on
        # a negatively strided host array and raises a bare BufferError on a byte-swapped one.
        kind = _dlpack_device_type(x)
        if kind is not None and kind not in _DLPACK_CUDA:
            raise DeviceMismatchError(f"{name}: expected a CUDA tensor or CuPy array, got a {type(x).__name__} "
                                      "in host memory (use the CPU engine, or move it to the GPU)")
        strides = getattr(x, "strides", None)
        if strides is not None and any(s < 0 for s in strides) and hasattr(x, "copy"):
            x = x.copy()  # negative strides (e.g. a[::-1]): a C-ordered copy on the same device
        try:
            t = torch.from_dlpack(x)  # CuPy: zero copy, synchronised with torch's current stream
        except Exception:
            if not hasattr(x, "__cuda_array_interface__"):
                raise
            t = torch.as_tensor(x)  # __cuda_array_interface__: zero copy on the data's device
            if t.is_cuda:
                _wait_for_producer(x.__cuda_array_interface__, t.device)
    else:
        raise InvalidDTypeError(f"{name}: expected a torch CUDA tensor or a CuPy array, got {type(x).__name__}")
    if not t.is_cuda:
        raise DeviceMismatchError(f"{name}: expected a CUDA tensor, got one on {t.device} "
                                  "(use the CPU engine, or move it with .cuda())")
    return t


def _wait_for_producer(cai, device: torch.device) -> None:
    """CUDA Array Interface v3: a consumer orders its work after the producer's stream when the
    interface names one (DLPack does this itself; a plain __cuda_array_interface__ object, e.g. a
    Numba device array, leaves it to us).  No stream (None, absent) means the data is ready."""
    stream = cai.get("stream") if isinstance(cai, dict) else None
    if stream is None:
        return
    if isinstance(stream, bool) or not isinstance(stream, int) or stream <= 0:
        raise InvalidInputError(f"__cuda_array_interface__: expected 'stream' to be None or a positive "
                                f"integer (CUDA Array Interface v3), got {stream!r}")
    torch.cuda.current_stream(device).wait_stream(torch.cuda.ExternalStream(stream, device=device))


_DLPACK_CUDA = (2, 13)  # DLPack device types kDLCUDA and kDLCUDAManaged


def _dlpack_device_type(x) -> Optional[int]:
    """DLPack device type of x (1 = host memory, 2 = CUDA, ...), or None when x does not say."""
    if not hasattr(x, "__dlpack_device__"):
        return None
    try:
        return int(x.__dlpack_device__()[0])
    except Exception:
        return None


def _same_device(dev: torch.device, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != dev:
            raise DeviceMismatchError(f"{name}: on {t.device}, expected {dev}")


def _poison_(t: torch.Tensor) -> torch.Tensor:
    if _poison and t.numel() > 0:
        if t.is_floating_point():
            t.fill_(float("nan"))
        else:
            t.view(-1).view(torch.uint8).fill_(0xFF)
    return t


def _empty(shape, dtype, dev) -> torch.Tensor:
    return _poison_(torch.empty(shape, dtype=dtype, device=dev))


def _scratch(nbytes: int, dev) -> torch.Tensor:
    return _poison_(torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=dev))


_NONNULL: Dict[torch.device, torch.Tensor] = {}


def _ptr(t: Optional[torch.Tensor]) -> int:
    """Device address of t; 0 only when t is None.

    The native code reads a null pointer as "absent" (no stored codes, no optional output) and
    rejects null where an array is required, but torch gives an empty CUDA tensor data_ptr() 0.
    An empty tensor therefore gets the address of a small live buffer on its device instead: it
    has no elements, so nothing ever reads or writes there.
    """
    if t is None:
        return 0
    p = int(t.data_ptr())
    if p == 0 and t.numel() == 0:
        buf = _NONNULL.get(t.device)
        if buf is None:
            buf = _NONNULL.setdefault(t.device, torch.empty(256, dtype=torch.uint8, device=t.device))
        p = int(buf.data_ptr())
    return p


def _stream(dev: torch.device) -> int:
    return int(torch.cuda.current_stream(dev).cuda_stream)


def _mode(mode: Union[int, str]) -> int:
    if isinstance(mode, str):
        if mode not in MODES:
            raise ConfigError(f"mode: expected one of {sorted(MODES)}, got {mode!r}")
        return MODES[mode]
    m = int(mode)
    if m not in (0, 1, 2):
        raise ConfigError(f"mode: expected 0 (mean), 1 (light) or 2 (squared), got {mode!r}")
    return m


def _check_bits(r: int, name: str) -> None:
    if not 1 <= r <= 64:
        raise InvalidInputError(f"{name}: n_bits (last dimension) must be 1..64, got {r}")


# ------------------------------------------------------------------------------------------- API
def binarize(x, from_logits: bool = False, inplace: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """[..., r] float32 codes (or logits) -> (codes [..., r] float32, keys [...] torch.uint64).

    Key bit i = code_i >= 0.5.  With from_logits=True the codes are torch's float32 sigmoid of x
    (1 / (1 + exp(-x))) and the keys come from those written codes; they go to a new tensor, or
    over x itself when inplace=True (x must then be contiguous, else a contiguous copy is used and
    returned).  With from_logits=False the returned codes are x itself (made contiguous).
    """
    C = _native()
    x = _as_tensor(x, "x")
    if x.dtype != torch.float32:
        raise InvalidDTypeError(f"x: expected float32, got {x.dtype}")
    if x.dim() < 1:
        raise InvalidInputError("x: expected at least 1 dimension [..., n_bits]")
    r = int(x.shape[-1])
    _check_bits(r, "x")
    x = x.contiguous()
    dev = x.device
    with torch.cuda.device(dev):
        codes = _empty(x.shape, torch.float32, dev) if from_logits and not inplace else x
        keys = _empty(x.shape[:-1], torch.uint64, dev)
        n_rows = x.numel() // r
        if n_rows:
            C.binarize_cuda(_ptr(x), n_rows, r, bool(from_logits), _ptr(codes) if from_logits else 0, _ptr(keys),
                            _stream(dev), dev.index)
    return codes, keys


def build_tables(keys, codes, ids, keep_codes: bool = True) -> Dict[str, Optional[torch.Tensor]]:
    """Sorted tables from keys [b, n] uint64 (or int64 bits), codes [b, n, r] float32|float16, ids [b, n] int64.

    Returns the dict of ``_C.build_tables_cpu`` as CUDA tensors: keys [U] uint64, table_start [b+1]
    int64, offsets [U+1] int64, ids [b*n] int64, codes [b*n, r] (codes' dtype; None when
    keep_codes=False), bucket_sum [U, r] float64, bucket_sqnorm [U] float64.
    """
    C = _native()
    keys = _as_tensor(keys, "keys")
    codes = _as_tensor(codes, "codes")
    ids = _as_tensor(ids, "ids")
    if keys.dtype not in _KEY_DTYPES:
        raise InvalidDTypeError(f"keys: expected uint64 (or int64 bits), got {keys.dtype}")
    if codes.dtype not in (torch.float32, torch.float16):
        raise InvalidDTypeError(f"codes: expected float32 or float16, got {codes.dtype}")
    if ids.dtype != torch.int64:
        raise InvalidDTypeError(f"ids: expected int64, got {ids.dtype}")
    if keys.dim() != 2 or codes.dim() != 3 or ids.dim() != 2:
        raise InvalidInputError(f"expected keys [b, n], codes [b, n, r], ids [b, n]; got {tuple(keys.shape)}, "
                                f"{tuple(codes.shape)}, {tuple(ids.shape)}")
    b, n, r = int(codes.shape[0]), int(codes.shape[1]), int(codes.shape[2])
    if tuple(keys.shape) != (b, n) or tuple(ids.shape) != (b, n):
        raise InvalidInputError(f"keys {tuple(keys.shape)} and ids {tuple(ids.shape)} must be [b, n] = [{b}, {n}]")
    _check_bits(r, "codes")
    dev = codes.device
    _same_device(dev, keys=keys, ids=ids)
    keys, codes, ids = keys.contiguous(), codes.contiguous(), ids.contiguous()
    half = codes.dtype == torch.float16
    with torch.cuda.device(dev):
        stream = _stream(dev)
        temp_bytes = int(C.build_tables_cuda_temp_bytes(b, n, r, dev.index))
        temp = _scratch(temp_bytes, dev)
        n_unique, perm_buffer, key_buffer = C.build_tables_cuda_sort(
            _ptr(keys), _ptr(codes), _ptr(ids), b, n, r, half, _ptr(temp), temp_bytes, stream, dev.index)
        U = int(n_unique)
        out = {
            "keys": _empty((U,), torch.uint64, dev),
            "table_start": _empty((b + 1,), torch.int64, dev),
            "offsets": _empty((U + 1,), torch.int64, dev),
            "ids": _empty((b * n,), torch.int64, dev),
            "codes": _empty((b * n, r), codes.dtype, dev) if keep_codes else None,
            "bucket_sum": _empty((U, r), torch.float64, dev),
            "bucket_sqnorm": _empty((U,), torch.float64, dev),
        }
        C.build_tables_cuda_finish(
            _ptr(keys), _ptr(codes), _ptr(ids), b, n, r, half, U, perm_buffer, key_buffer, _ptr(out["keys"]),
            _ptr(out["table_start"]), _ptr(out["offsets"]), _ptr(out["codes"]), _ptr(out["ids"]),
            _ptr(out["bucket_sum"]), _ptr(out["bucket_sqnorm"]), _ptr(temp), temp_bytes, stream, dev.index)
    return out


def lookup(tables: Dict, n_items: int, query_codes, query_keys, mode: Union[int, str] = 0,
           miss_value: float = float("inf"), *, return_min: bool = False, return_visited: bool = False,
           return_partial: bool = False):
    """Distances [M, b] float32 of each query to its bucket in each table (miss_value on a miss).

    tables: the dict of build_tables (CUDA tensors; see tables_to_device for numpy tables),
    query_codes [M, b, r] float32, query_keys [M, b] uint64 (or int64 bits), mode 0 'mean'
    (mean L2), 1 'light' (L2 to the bucket mean), 2 'squared' (mean squared L2).
    return_min adds the [M] min over tables; return_visited adds the [M, b] int64 rows visited
    (lookup_cpu's count); return_partial adds the shard partial sums of lookup_cpu(partial=True):
    [M, b] float64 sums of the distances and [M, b] int64 bucket sizes (0 and 0 on a miss), which
    combine across shards as sum(sums) / sum(counts).  Returns the distances alone, or a tuple with
    the extras in that order.
    """
    C = _native()
    m = _mode(mode)
    t = {k: tables.get(k) for k in TABLE_KEYS}
    for k in ("keys", "table_start", "offsets", "bucket_sum", "bucket_sqnorm"):
        if t[k] is None:
            raise InvalidInputError(f"tables: missing {k!r}")
        t[k] = _as_tensor(t[k], f"tables[{k!r}]")
    if t["codes"] is not None:
        t["codes"] = _as_tensor(t["codes"], "tables['codes']")
    q = _as_tensor(query_codes, "query_codes")
    qk = _as_tensor(query_keys, "query_keys")
    dev = q.device
    _same_device(dev, query_keys=qk, **{f"tables[{k!r}]": v for k, v in t.items() if v is not None and k != "ids"})
    b = int(t["table_start"].numel()) - 1
    U = int(t["keys"].numel())
    bs = t["bucket_sum"]
    if b < 1 or bs.dim() != 2:
        raise InvalidInputError("tables: table_start must have b + 1 >= 2 entries and bucket_sum must be [U, r]")
    r = int(bs.shape[1])
    _check_bits(r, "tables['bucket_sum']")
    n_items = int(n_items)
    if (t["keys"].dtype not in _KEY_DTYPES or t["table_start"].dtype != torch.int64 or t["offsets"].dtype != torch.int64
            or bs.dtype != torch.float64 or t["bucket_sqnorm"].dtype != torch.float64):
        raise InvalidDTypeError("tables: expected keys uint64, table_start/offsets int64, bucket_sum/bucket_sqnorm float64")
    if t["offsets"].numel() != U + 1 or bs.shape[0] != U or t["bucket_sqnorm"].numel() != U:
        raise InvalidInputError("tables: inconsistent array sizes (offsets must be [U+1], bucket_sum [U, r], "
                                "bucket_sqnorm [U])")
    codes = t["codes"]
    if codes is not None:
        if codes.dtype not in (torch.float32, torch.float16):
            raise InvalidDTypeError(f"tables['codes']: expected float32 or float16, got {codes.dtype}")
        if tuple(codes.shape) != (b * n_items, r):
            raise InvalidInputError(f"tables['codes']: expected shape [{b * n_items}, {r}], got {tuple(codes.shape)}")
    if m == 0 and codes is None:
        raise ConfigError("mode 'mean' needs the per-item codes; these tables keep statistics only "
                          "(use 'light' or 'squared')")
    if q.dtype != torch.float32:
        raise InvalidDTypeError(f"query_codes: expected float32, got {q.dtype}")
    if qk.dtype not in _KEY_DTYPES:
        raise InvalidDTypeError(f"query_keys: expected uint64 (or int64 bits), got {qk.dtype}")
    if q.dim() != 3 or q.shape[1] != b or q.shape[2] != r:
        raise InvalidInputError(f"query_codes: expected [M, {b}, {r}], got {tuple(q.shape)}")
    M = int(q.shape[0])
    if tuple(qk.shape) != (M, b):
        raise InvalidInputError(f"query_keys: expected [{M}, {b}], got {tuple(qk.shape)}")
    # ids are not read by the lookup (and may still be a numpy array): leave them out
    tc = {k: (v.contiguous() if v is not None else None) for k, v in t.items() if k != "ids"}
    q, qk = q.contiguous(), qk.contiguous()
    with torch.cuda.device(dev):
        out = _empty((M, b), torch.float32, dev)
        out_min = _empty((M,), torch.float32, dev) if return_min else None
        visited = _empty((M, b), torch.int64, dev) if return_visited else None
        psum = _empty((M, b), torch.float64, dev) if return_partial else None
        pcount = _empty((M, b), torch.int64, dev) if return_partial else None
        if M:
            temp_bytes = int(C.lookup_cuda_temp_bytes(M, b))
            temp = _scratch(temp_bytes, dev)
            C.lookup_cuda(_ptr(tc["keys"]), _ptr(tc["table_start"]), _ptr(tc["offsets"]), _ptr(tc["codes"]),
                          codes is not None and codes.dtype == torch.float16, _ptr(tc["bucket_sum"]),
                          _ptr(tc["bucket_sqnorm"]), b, r, n_items, _ptr(q), _ptr(qk), M, m, float(miss_value),
                          _ptr(out), _ptr(out_min), _ptr(visited), _ptr(psum), _ptr(pcount), _ptr(temp), temp_bytes,
                          _stream(dev), dev.index)
    if not (return_min or return_visited or return_partial):
        return out
    extra = tuple(x for x, want in ((out_min, return_min), (visited, return_visited)) if want)
    return (out,) + extra + ((psum, pcount) if return_partial else ())


def tables_to_device(tables: Dict, device: Union[str, torch.device] = "cuda") -> Dict:
    """Copies a tables dict (numpy arrays from the CPU engine, or tensors) to `device` as torch tensors.

    float16 codes stored as uint16 bits are not guessed: pass them as float16.  Other entries
    (e.g. "n_items") are kept as they are.
    """
    import numpy as np

    out = {}
    for k, v in tables.items():
        if k in TABLE_KEYS and v is not None:
            t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else torch.as_tensor(v)
            out[k] = t.to(device)
        else:
            out[k] = v
    return out
