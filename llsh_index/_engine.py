"""The one small dispatcher: numpy arrays go to the C++ engine, CUDA tensors to the CUDA engine.

It routes the table operations (binarize, build, lookup, statistics).  Hashing keeps its own two
paths in encoder.py: a CPU tensor takes one native pass that fuses LayerNorm's fold, the sigmoid and
the keys (it reads CPU memory, so it tests the tensor's device), a GPU tensor torch's GEMM and then
sigmoid_binarize here.

Tables are a dict of the six arrays of csrc/include/llsh/sorted_tables.h plus "ids" and
"n_items"; on the CPU they are numpy arrays, on a GPU torch tensors.
"""
from __future__ import annotations

import weakref
from typing import Dict

import numpy as np

from . import _C

MODES = {"mean": 0, "light": 1, "squared": 2}


def on_device(x) -> bool:
    """True for data the CUDA engine handles (torch CUDA tensors): the test of every table operation's path."""
    return hasattr(x, "is_cuda") and x.is_cuda




def binarize(codes):
    """(M, b, r) float32 codes -> (M, b) uint64 keys (bit i = code_i >= 0.5)."""
    if on_device(codes):
        from . import _cuda_engine

        return _cuda_engine.binarize(codes, from_logits=False)[1]
    return _C.binarize_cpu(np.ascontiguousarray(codes, dtype=np.float32), from_logits=False)


def sigmoid_binarize(logits):
    """In place: (M, b, r) float32 logits -> sigmoid codes; returns (codes, keys (M, b) uint64)."""
    if on_device(logits):
        from . import _cuda_engine

        return _cuda_engine.binarize(logits, from_logits=True, inplace=True)
    arr = logits.numpy() if hasattr(logits, "numpy") else logits
    keys = _C.binarize_cpu(arr, from_logits=True)
    return logits, keys


def build_tables(keys, codes, ids, keep_codes: bool = True, n_threads: int = 0, in_place: bool = False,
                 with_stats: bool = True, with_directory: bool = True) -> Dict:
    """keys (b, n) uint64, codes (b, n, r) float32|float16, ids (b, n) int64 -> sorted tables.

    in_place (CPU): the caller hands `codes` over; the engine sorts its rows in place and returns
    it as the tables' codes instead of allocating a second copy.
    with_stats=False (CPU, with keep_codes): bucket_sum / bucket_sqnorm are left None, to be
    derived from the codes by ensure_statistics() when first needed (they are as large as the
    codes again, and only the "light" and "squared" modes read them).
    """
    if on_device(codes):
        from . import _cuda_engine

        tables = _cuda_engine.build_tables(keys, codes, ids, keep_codes=keep_codes)
    else:
        half = codes.dtype == np.float16
        tables = _C.build_tables_cpu(keys, codes.view(np.uint16) if half else codes, ids,
                                     keep_codes=keep_codes, n_threads=n_threads, in_place=in_place,
                                     with_stats=with_stats)
        if half and tables["codes"] is not None:
            tables["codes"] = tables["codes"].view(np.float16)
    tables["n_items"] = int(keys.shape[1])
    if not on_device(codes) and with_directory:  # with the build, not on the first lookup (a batch about
        directory(tables, int(codes.shape[2]), n_threads)  # to be merged into larger tables needs none)
    return tables


def merge_tables(a: Dict, b: Dict, b_id_shift: int = 0, n_threads: int = 0, with_directory: bool = True) -> Dict:
    """The union of two CPU tables that keep their codes, as one build_tables of all their rows
    gives (b's ids shifted by b_id_shift), by merging the sorted runs: no sort of the whole index.
    Statistics are left None (ensure_statistics derives them), as a build with with_stats=False."""
    half = a["codes"].dtype == np.float16

    tables = _C.merge_tables_cpu(_stored_side(a, half), _stored_side(b, half), int(b_id_shift), n_threads)
    return _finish_stored(tables, half, int(a["n_items"]) + int(b["n_items"]), n_threads, with_directory)


def remove_items(t: Dict, keep: np.ndarray, n_threads: int = 0, with_directory: bool = True) -> Dict:
    """CPU tables that keep their codes, without the items where keep (n_items,) bool is False; the
    kept items renumbered 0.. in order: the tables one build of the kept rows gives, by copying
    the kept runs (no sort).  Statistics are left None, as after merge_tables."""
    half = t["codes"].dtype == np.float16
    tables = _C.remove_items_cpu(_stored_side(t, half), np.ascontiguousarray(keep, dtype=bool), n_threads)
    return _finish_stored(tables, half, int(np.count_nonzero(keep)), n_threads, with_directory)


def _stored_side(t: Dict, half: bool) -> Dict:
    """The five arrays the native merge / removal read (float16 codes viewed as uint16)."""
    return {k: (t[k].view(np.uint16) if half and k == "codes" else t[k])
            for k in ("keys", "table_start", "offsets", "codes", "ids")}


def _finish_stored(tables: Dict, half: bool, n_items: int, n_threads: int, with_directory: bool) -> Dict:
    if half:
        tables["codes"] = tables["codes"].view(np.float16)
    tables["n_items"] = n_items
    if with_directory:
        directory(tables, int(tables["codes"].shape[1]), n_threads)
    return tables


class DerivedArrays:
    """Arrays derived from one array of the tables, kept beside the tables rather than in their dict:
    files and copies to a device see the six arrays of the layout only (memory_bytes() adds these).
    Keyed by the source array's identity, with a weak reference so an entry goes with its array.
    Tables are never modified in place (add() swaps in a new dict), so a source keeps one value."""

    def __init__(self):
        self._entries: Dict[int, tuple] = {}  # id(source) -> (weak reference to it, derived value)

    def get(self, source, build):
        """The value derived from `source`, built by build() on the first call."""
        entry = self._entries.get(id(source))
        if entry is not None and entry[0]() is source:
            return entry[1]
        value = build()
        key = id(source)

        def forget(ref):
            if self._entries.get(key, (None,))[0] is ref:
                self._entries.pop(key, None)

        self._entries[key] = (weakref.ref(source, forget), value)
        return value

    def nbytes(self, source) -> int:
        """Bytes of the value derived from `source` (0 when none was built, or it is None)."""
        entry = None if source is None else self._entries.get(id(source))
        if entry is None or entry[0]() is not source or entry[1] is None:
            return 0
        value = entry[1]
        return int(value.nbytes) if isinstance(value, np.ndarray) else int(value.numel() * value.element_size())


# the lookup directory of each keys array (build_directory in csrc/lookup/lookup.h)
_DIRECTORIES = DerivedArrays()


def directory(tables: Dict, n_bits: int, n_threads: int = 0):
    """The lookup directory of CPU tables (int64 [b, 2^bits + 1]), or None for small tables."""
    return _DIRECTORIES.get(tables["keys"], lambda: _C.build_directory_cpu(tables["keys"], tables["table_start"],
                                                                           n_bits, n_threads))


def directory_nbytes(tables: Dict) -> int:
    """Bytes of the lookup directory cached for these tables (0 when none was built)."""
    return _DIRECTORIES.nbytes(tables["keys"])


def ensure_statistics(tables: Dict, n_threads: int = 0) -> Dict:
    """Fills in bucket_sum / bucket_sqnorm from the codes when the build skipped them (in place,
    once: the dict keeps them).  The values are bit for bit those an eager build computes."""
    if tables.get("bucket_sum") is not None or tables.get("codes") is None:
        return tables
    codes, offsets = tables["codes"], tables["offsets"]
    device = codes.device if hasattr(codes, "device") and not isinstance(codes, np.ndarray) else None
    if device is not None:
        codes, offsets = codes.cpu().numpy(), offsets.cpu().numpy()
    if codes.dtype == np.float16:
        codes = codes.view(np.uint16)
    bsum, bsq = _C.bucket_stats_cpu(offsets, codes, n_threads)
    if device is not None:
        import torch

        bsum, bsq = torch.from_numpy(bsum).to(device), torch.from_numpy(bsq).to(device)
    # sqnorm first: a concurrent reader that sees bucket_sum set finds bucket_sqnorm set too
    tables["bucket_sqnorm"] = bsq
    tables["bucket_sum"] = bsum
    return tables


def lookup(tables: Dict, query_codes, query_keys, mode: int, miss_value: float, n_threads: int = 0,
           partial: bool = False):
    """Distances (M, b) float32 and the number of stored codes (or bucket means) visited.

    partial=True also returns the shard partial sums: float64 sums and int64 counts (M, b), as
    (distances, visited, sums, counts); the CUDA engine reports no visited count (None).
    """
    if mode != MODES["mean"]:
        ensure_statistics(tables, n_threads)
    if on_device(query_codes):
        from . import _cuda_engine

        if partial:
            out, sums, counts = _cuda_engine.lookup(tables, tables["n_items"], query_codes, query_keys, mode,
                                                    miss_value, return_partial=True)
            return out, None, sums, counts
        return _cuda_engine.lookup(tables, tables["n_items"], query_codes, query_keys, mode, miss_value), None
    codes = tables["codes"]
    n_bits = int((codes if codes is not None else tables["bucket_sum"]).shape[1])
    if codes is not None and codes.dtype == np.float16:
        codes = codes.view(np.uint16)
    return _C.lookup_cpu(tables["keys"], tables["table_start"], tables["offsets"], codes, tables["bucket_sum"],
                         tables["bucket_sqnorm"], tables["n_items"], query_codes, query_keys, mode,
                         float(miss_value), n_threads, partial, directory(tables, n_bits, n_threads))
