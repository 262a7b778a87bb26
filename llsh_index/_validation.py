"""Input checks shared by the index, the baselines and the CLI.

Every check raises a typed error (llsh_index.errors) naming what was expected and what came.
"""
from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Iterable
from typing import Any, Optional

import numpy as np

from .errors import ConfigError, DeviceMismatchError, InvalidDTypeError, InvalidInputError

# What the package takes as a file path; an int is never one (open() would take it as a descriptor).
PATH_TYPES = (str, bytes, os.PathLike)


def as_list(items: Any, where: str, what: str) -> list:
    """`items` as a list, where one path alone is one item (not a sequence of its characters)."""
    if isinstance(items, PATH_TYPES):
        return [items]
    if not isinstance(items, Iterable):
        raise ConfigError(f"{where}: expected a list of {what}, got {type(items).__name__} {items!r}")
    return list(items)

_FLOAT_KINDS = ("float16", "float32", "float64", "bfloat16")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _is_cupy(x: Any) -> bool:
    return type(x).__module__.startswith("cupy")


def array_device(x: Any) -> str:
    """'cpu' or 'cuda:N' for numpy arrays, torch tensors and cupy arrays."""
    if _is_torch(x):
        return "cpu" if x.device.type == "cpu" else str(x.device)
    if _is_cupy(x):
        return f"cuda:{x.device.id}"
    return "cpu"


def unmasked(x: Any, name: str) -> Any:
    """x itself, or a masked array's data when nothing is masked.  np.asarray (and every engine) reads
    the data under a mask, so masked entries would be scored as data: refused, typed."""
    if isinstance(x, np.ma.MaskedArray):
        n_masked = int(np.ma.count_masked(x))
        if n_masked:
            raise InvalidInputError(f"{name}: expected no masked values, got a masked array with {n_masked} "
                                    "masked; fill them (x.filled(value)) or drop their rows first")
        return np.ma.getdata(x)
    return x


def check_features(x: Any, name: str = "features", dim: Optional[int] = None, device: str = "cpu"):
    """Validate a 2-D float feature batch and return it as a torch tensor on `device`.

    numpy arrays, torch tensors and cupy arrays are accepted, float16/32/64 (and bfloat16
    for torch), any memory order.  Finiteness is
    checked by the caller on the projected codes, which is cheaper and catches the same rows
    (a NaN or Inf anywhere in a row makes its normalised codes NaN).  The tensor keeps the
    input's dtype and strides (a view): callers convert chunk by chunk.
    """
    import torch

    if _is_torch(x):
        if x.requires_grad:
            raise InvalidInputError(
                f"{name}: expected a tensor that does not require grad, got requires_grad=True "
                "(call .detach() first)")
        dtype = str(x.dtype).replace("torch.", "")
        shape = tuple(x.shape)
        src_device = array_device(x)
    elif _is_cupy(x):
        dtype = str(x.dtype)
        shape = tuple(x.shape)
        src_device = array_device(x)
    else:
        x = unmasked(x, name)
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception as exc:  # ragged lists and the like
                raise InvalidInputError(f"{name}: expected a 2-D float array, got {type(x).__name__}") from exc
        dtype = x.dtype.name  # the name ignores byte order: big-endian floats are swapped below
        shape = x.shape
        src_device = "cpu"
    if dtype not in _FLOAT_KINDS:
        raise InvalidDTypeError(f"{name}: expected a float16/float32/float64 array, got dtype {dtype}")
    if len(shape) != 2:
        raise InvalidInputError(f"{name}: expected a 2-D array (n, dim), got shape {shape}")
    if shape[0] == 0:
        raise InvalidInputError(f"{name}: expected at least one row, got shape {shape}")
    if shape[1] == 0 or (dim is not None and shape[1] != dim):
        raise InvalidInputError(f"{name}: expected dimension {dim}, got shape {shape}")
    want_cuda = device.startswith("cuda")
    if want_cuda != src_device.startswith("cuda") or (not want_cuda and src_device != "cpu"):
        raise DeviceMismatchError(f"{name}: expected data on {device}, got data on {src_device} "
                                  f"(move the data, or the index with index.to(...))")
    if _is_torch(x):
        if x.layout != torch.strided:  # sparse / mkldnn: the chunked GEMM reads strided memory
            raise InvalidInputError(f"{name}: expected a dense (strided) tensor, got layout {x.layout} "
                                    f"(call .to_dense() first)")
        t = x.detach()
        if t.is_neg() or t.is_conj():  # lazy negation bits (torch._neg_view) that from_numpy-style views lack
            t = t.resolve_neg().resolve_conj()
    elif _is_cupy(x):
        t = torch.from_dlpack(x)  # zero copy, stays on the device
    else:
        if x.dtype.byteorder == ">" or x.dtype.byteorder not in ("=", "|", "<"):
            x = x.astype(x.dtype.newbyteorder("="))
        if any(st < 0 for st in x.strides) or any(st % x.itemsize for st in x.strides):
            x = np.ascontiguousarray(x)  # the strides torch cannot view: the only whole copy
        with warnings.catch_warnings():  # read-only arrays (memmaps) are fine: the index never writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(x)
    if want_cuda and str(t.device) != device and device != "cuda":
        raise DeviceMismatchError(f"{name}: expected data on {device}, got data on {t.device}")
    # No dtype conversion or copy here: the index converts chunk by chunk, so a float64 or strided
    # input never costs a full float32 copy.
    return t


def check_int_range(value: Any, name: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        rng = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name}: expected {rng}, got {value}")
    return int(value)


SEED_MAX = 2 ** 32 - 1  # torch's CPU generator keeps 32 bits: seed 2**32 would draw seed 0's layers


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed of the hash layers and training: 0..2**32 - 1, every one of which draws its own layers
    (torch.manual_seed accepts wider seeds but keeps only their low 32 bits, so 2**32 and -2**32
    would silently repeat seed 0)."""
    return check_int_range(value, name, 0, SEED_MAX)


def check_bool(value: Any, name: str, allow_01: bool = False) -> bool:
    """A switch as bool: ConfigError for anything but True / False (bool("no") is True); allow_01: the
    integers 0 and 1 too (progress=0, an idiom the tests keep)."""
    if allow_01 and isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}: expected True or False{' (or 0 / 1)' if allow_01 else ''}, got "
                          f"{type(value).__name__} {value!r}")
    return bool(value)


# Up to this many bits the digit count of a huge int is exact (one power of ten, microseconds);
# beyond, it is estimated from the bit length (a 10**7-digit power of ten would take seconds).
_EXACT_DIGITS_BITS = 1 << 17


def huge_int_words(value: Any, signed: bool = True) -> str:
    """'an integer of 401 digits' ('a negative integer ...' when signed) for an error about an int beyond
    float64.  Counted from int.bit_length(): len(str(n)) raises ValueError past 4300 digits (Python's
    int-to-str limit), which turned the typed error into an untyped one."""
    n = abs(int(value))
    bits = n.bit_length()
    digits = int((bits - 1) * math.log10(2)) + 1 if bits else 1  # 2**(bits-1) has this many digits
    if bits <= _EXACT_DIGITS_BITS:
        digits += n >= 10 ** digits  # n in [2**(bits-1), 2**bits) has that many digits or one more
        size = f"{digits} digits"
    else:
        size = f"about {digits} digits ({bits} bits)"
    return f"{'a negative' if signed and value < 0 else 'an'} integer of {size}"


def as_real(value: Any, name: str) -> float:
    """A real-valued setting as float: ConfigError for a string, None, bool or complex, not float()'s ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float64
        raise ConfigError(f"{name}: expected a number within float64's range, got {huge_int_words(value)}") from None


def check_video_ids(video_ids: Any, n: int) -> np.ndarray:
    """Per-row video labels -> int64 group ids (0..n_videos-1) in order of first appearance."""
    ids = np.asarray(video_ids)
    if ids.ndim == 0:  # a generator, a set, a scalar: np.asarray wraps it whole, so its shape () says nothing
        raise InvalidInputError(f"video_ids: expected a sequence or array of {n} video ids (one per feature row), "
                                f"got {type(video_ids).__name__}")
    if ids.ndim != 1 or ids.shape[0] != n:
        raise InvalidInputError(f"video_ids: expected {n} labels (one per feature row), got shape {ids.shape}")
    if ids.dtype.kind in "fc" and not np.isfinite(ids).all():  # NaN ids would make one silent "video"
        bad = int(np.flatnonzero(~np.isfinite(ids))[0])
        raise InvalidInputError(f"video_ids: expected finite labels, got {ids[bad]} at row {bad}")
    try:
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    except TypeError as exc:  # an object array mixing types (str and int, None)
        kinds = sorted({type(v).__name__ for v in ids.tolist()})
        raise InvalidInputError(f"video_ids: expected labels of one sortable type (ints or strings), got a mix of "
                                f"{', '.join(kinds)}") from exc
    # renumber by first appearance so ids do not depend on how labels sort
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse].astype(np.int64)
