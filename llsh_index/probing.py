"""Query-directed multi-probe lookups: an extension, off by default (the paper probes one bucket).

A bit whose real-valued code lies near 0.5 is the bit a near neighbour most likely has the other
way round (Lv et al., "Multi-Probe LSH", VLDB 2007), and LLSH's codes say how near each bit is.
The probe sequence of one (query, table) is its own key, then its keys with one or two bits
flipped, ranked by the summed confidence |code - 0.5| of the flipped bits; the n_probes cheapest
are probed.  Ties keep the enumeration order: no flip, single flips by confidence rank, then pairs
(i < j) of ranks in lexicographic order; bits of equal confidence rank by bit index.  A table's
distance is the smallest over the probed buckets that exist, and a miss only if none does.

Probing on a miss (``miss_probes``, also ours): a query that misses every table is looked up again
with ``miss_probes`` probes per table, and only such queries.  The paper scores it with a large
constant, which makes a spike in the score curve for a query that merely fell across a hyperplane
in every table; probing finds the nearby buckets instead, at the cost of the further probes for
those queries only.  (With a miss value below real distances, e.g. 0, and the minimum over tables,
a re-probed query's score changes only if the probes reach a bucket in every table.)

At most 1 + r + r(r - 1) / 2 distinct probes exist (flips of one or two bits); a larger
n_probes probes them all.  The probes go through the engine's ordinary lookup (CPU or CUDA), one
call per probe rank, so the tables and kernels are those of the single-bucket path.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._validation import check_int_range
from .errors import ConfigError

# Candidate (query, table, flip-set or bit) entries built at once: bounds the memory of the ranking
# (each entry has a float32 cost, an int64 mask and sort temporaries: ~20-30 bytes).
_RANK_BLOCK = 1 << 20


def n_candidates(n_bits: int, n_probes: int) -> int:
    """Flip sets ranked for n_probes: no flip, the singles and pairs of the n_probes - 1 least
    confident bits (a flip of any other bit has more than n_probes - 1 cheaper candidates)."""
    f = min(int(n_bits), int(n_probes) - 1)
    return 1 + f + f * (f - 1) // 2


def probe_masks(codes, n_probes: int) -> torch.Tensor:
    """(M, b, P) int64 XOR masks, probe rank last, P = min(n_probes, candidates).

    codes: (M, b, r) float32 numpy array or torch tensor; the masks are a torch tensor on the
    codes' device (bit i of a key is code position i; bit 63 is the int64 sign bit, which XOR
    treats like any other).
    """
    if isinstance(n_probes, bool) or not isinstance(n_probes, (int, np.integer)) or n_probes < 1:
        raise ConfigError(f"n_probes: expected an integer >= 1, got {n_probes!r}")
    if isinstance(codes, np.ndarray):  # read only; torch wraps read-only arrays (e.g. from ray.get) with a warning
        c = torch.from_numpy(codes if codes.flags.writeable else codes.copy())
    else:
        c = codes
    m, b, r = c.shape
    f = min(r, int(n_probes) - 1)
    n_cand = n_candidates(r, n_probes)
    p = min(int(n_probes), n_cand)
    out = torch.empty((m, b, p), dtype=torch.int64, device=c.device)
    if f == 0:
        out.zero_()
        return out
    ii, jj = torch.triu_indices(f, f, offset=1, device=c.device)  # pairs of confidence ranks, i < j
    step = max(1, _RANK_BLOCK // max(1, b * max(n_cand, r)))  # the bit sort is (n, b, r) too
    one = torch.ones((), dtype=torch.int64, device=c.device)
    for s in range(0, m, step):
        conf, bit = torch.sort((c[s:s + step] - 0.5).abs(), dim=2, stable=True)  # ties by bit index
        conf, bit = conf[..., :f], bit[..., :f]
        single = torch.bitwise_left_shift(one, bit)                       # (n, b, f)
        cost = torch.cat([torch.zeros_like(conf[..., :1]), conf, conf[..., ii] + conf[..., jj]], dim=2)
        mask = torch.cat([torch.zeros_like(single[..., :1]), single, single[..., ii] | single[..., jj]], dim=2)
        order = torch.sort(cost, dim=2, stable=True).indices[..., :p]
        out[s:s + step] = torch.gather(mask, 2, order)
    return out


def xor_keys(keys, mask: torch.Tensor):
    """keys (M, b) uint64 (numpy or torch) XOR an int64 mask (M, b) -> same kind as keys."""
    if isinstance(keys, np.ndarray):
        return np.bitwise_xor(keys, mask.numpy().view(np.uint64))
    # torch's uint64 has few ops: XOR on the int64 view of the same bits
    return torch.bitwise_xor(keys.view(torch.int64), mask).view(torch.uint64)


def min_over_probes(codes, keys, n_probes: int, distances, miss_value: float, first_rank: int = 0):
    """(M, b): per (query, table) the smallest distance over the probed buckets that exist.

    distances(keys) -> (M, b) distances of one probe rank's keys, +inf where the bucket is absent
    (numpy, or a tensor on the codes' device): the engine's lookup for one index, the shards' partial
    sums combined exactly for a sharded one.  The result is of the same kind, misses -> miss_value.
    first_rank: skip the cheapest ranks (the caller knows they miss); None left: all miss_value.
    """
    masks = probe_masks(codes, n_probes)
    best = None
    for p in range(first_rank, masks.shape[2]):
        d = distances(xor_keys(keys, masks[:, :, p].contiguous()))
        best = d if best is None else (torch.minimum(best, d) if isinstance(d, torch.Tensor) else np.minimum(best, d))
    if best is None:  # every rank skipped
        m, b = masks.shape[:2]
        if isinstance(codes, torch.Tensor):
            return torch.full((m, b), miss_value, dtype=torch.float32, device=codes.device)
        return np.full((m, b), miss_value, dtype=np.float32)
    return fill_misses(best, miss_value)


def fill_misses(d, miss_value: float):
    """d (numpy, or a tensor on any device) with its +inf entries (absent buckets) set to miss_value, in place."""
    if isinstance(d, torch.Tensor):
        return d.masked_fill_(torch.isinf(d), miss_value)
    d[np.isinf(d)] = miss_value
    return d


def check_probes(n_probes, miss_probes, names=("n_probes", "miss_probes")):
    """(n_probes, miss_probes) as ints: n_probes >= 1; miss_probes 0 (off) or above n_probes (fewer
    probes than the first lookup would find nothing new).  names: what the errors call them (the
    command line's --probes / --miss-probes)."""
    n_probes = check_int_range(n_probes, names[0], 1)
    p = check_int_range(miss_probes, names[1], 0)
    if 0 < p <= n_probes:
        raise ConfigError(f"{names[1]}: expected 0 (off) or more than {names[0]} ({n_probes}), got {p}")
    return n_probes, p


def _take_rows(a, rows):
    if isinstance(a, np.ndarray):
        return a[rows]
    if a.dtype == torch.uint64:  # few ops exist for uint64 tensors: index the int64 view of the same bits
        return a.view(torch.int64)[rows].view(torch.uint64)
    return a[rows]


def probe_missed(codes, keys, best, miss_probes: int, distances, miss_value: float, done: int = 1):
    """best (M, b) table distances with +inf where a bucket is absent (numpy or a tensor on the codes'
    device), filled in place and returned: rows that hit no table are looked up again with
    miss_probes probes (min_over_probes), from rank `done` on (the `done` cheapest, already looked
    up, missed); the misses left then take miss_value.
    distances(codes, keys, rows) -> (M', b) distances of rows `rows` (an index array; None: all M),
    whose codes are `codes`, at `keys`; +inf where absent."""
    on_torch = isinstance(best, torch.Tensor)
    dead = torch.isinf(best).all(dim=1) if on_torch else np.isinf(best).all(axis=1)  # hit no table
    rows = torch.nonzero(dead).flatten() if on_torch else np.flatnonzero(dead)
    if len(rows):
        c, k = _take_rows(codes, rows), _take_rows(keys, rows)
        best[rows] = min_over_probes(c, k, miss_probes, lambda kk: distances(c, kk, rows), math.inf,
                                     first_rank=done)
    return fill_misses(best, miss_value)


def probed_distances(codes, keys, n_probes: int, miss_probes: int, distances, miss_value: float):
    """(M, b) table distances with n_probes probes per table, then (miss_probes > 0) the rows that
    missed every table looked up again with miss_probes probes (probe_missed); misses -> miss_value.
    distances(codes, keys, rows) -> (M', b) distances, +inf where the bucket is absent (see
    probe_missed): the engine's lookup for one index, the shards' partial sums combined exactly for a
    sharded one, the leave-one-out sums for LLSHDetector's calibration (which needs `rows`)."""
    first_miss = math.inf if miss_probes else miss_value  # a miss stays +inf until the re-probe
    best = min_over_probes(codes, keys, n_probes, lambda k: distances(codes, k, None), first_miss)
    if miss_probes:
        best = probe_missed(codes, keys, best, miss_probes, distances, miss_value, done=n_probes)
    return best
