"""Distributed LLSH index on Ray: one actor per shard, exact scores reduced on the driver.

    from llsh_index import LearnableLSHIndex
    from llsh_index.distributed import build_distributed

    layers = LearnableLSHIndex(d, n_tables=8, n_bits=32).fit(sample, video_ids=sample_vids)  # on the driver
    dist = build_distributed(layers, ["part0.npy", "part1.npy", ...])   # each worker loads + hashes its part
    scores = dist.score(test)            # == one index over the concatenated parts (to float rounding)
    dist.save_shards("shards/")          # each worker writes its own shard file
    dist.shutdown()

How it works.  The hash layers (``layers.empty_like()``, no tables) are put in the object store
once (``ray.put``) and every shard actor gets that reference.  A shard actor obtains its partition
itself - a numpy array, a Ray ObjectRef, a ``.npy`` path (``np.load(mmap_mode="r")`` on the worker)
or any picklable zero-argument callable returning an array - and builds its shard with ``add()``.
The shard lives in the actor's memory; the driver never holds the codes.  ``score()`` hashes the
queries once on the driver (in rounds of ``query_batch`` rows, the next round hashed while the
shards work on the current one) and puts each round's codes and keys in the object store once:
b*r*4 + b*8 bytes per query instead of d*4, and no shard repeats the hashing.  Each shard answers
``partial_scores()`` on those codes (per query and table: bucket size and sum of distances, or the
bucket's code sum for "light"), and the driver reduces with ``combine_partial_scores()``.  The
result equals the single-machine index built from the concatenated partitions: per (query, table)
the distance is sum(sums) / sum(counts) in float64.  Queries passed as an ObjectRef are hashed by
the first shard's worker, so they never pass through the driver.

Shard i's items come after the items of shards < i, so ``gather()`` (``merge_all`` of the shards,
for tests and small data) is bit-identical to one ``add()`` of the concatenation.

Actor pool.  Starting an actor starts a Python process that imports torch (~3 s); a ``ShardPool``
starts its actors once and ``build_distributed(..., pool=pool)`` / ``load_distributed(...,
pool=pool)`` reuse them (``DistributedIndex.shutdown()`` hands them back, ``pool.shutdown()`` ends
them).

Resources.  Before it starts actors, a pool, build or load compares what they will hold with what
the cluster's live nodes have in total (``ray.nodes()``, summed as ``ray.cluster_resources()``):
shards x ``num_cpus_per_shard`` CPUs and each custom resource of ``resources``, packed node by node
as Ray places them.  A request the cluster can never satisfy as it stands raises ``ConfigError``
at once (Ray itself would queue the actors forever, silently).  A cluster whose autoscaler adds
nodes on demand can grow to fit: pass ``check_resources=False`` there (``--no-resource-check``).
Then the actors must be up and warm within ``ready_timeout`` seconds (120 by default, None waits
forever): if not - the resources are held by other actors or tasks, or nodes are slow to come up -
``ConfigError`` says how many are pending and what they wait for, and the actors are ended.

Running on a cluster.  Start Ray on every machine (``ray start --head`` on one, ``ray start
--address=HEAD:6379`` on the others, with this package installed in the same environment on each),
put the partitions where the workers can read them (a shared filesystem, or one local file per
node: pass paths, not arrays, so the data never goes through the driver), then on the head:

    python -m llsh_index.distributed --address auto --train /shared/a.npy,/shared/b.npy \\
        --test q.npy --out scores.npy --layers layers.llsh [--save-shards shards/]

``--address local`` starts a local Ray instance instead (``ray.init()``).  Without ``--layers`` the
index is untrained LSH (``--n-tables``, ``--n-bits``, ``--seed``).  ``--cpus-per-shard`` reserves
CPUs for each shard actor, which also spreads the actors over the nodes.

Training.  What is provided is training on a sample: ``LearnableLSHIndex.fit`` on the driver (or
any one machine) over a representative sample of the normal videos, then ``build_distributed``
hashes everything with the trained layers.  The layers are small (b*r*d floats) and MoCo converges
on a sample, so this is usually enough.  Distributed *training* would need data-parallel MoCo:
one torch.distributed process group over the workers (e.g. ``ray.train.torch.TorchTrainer``), each
worker sampling (anchor, positive) pairs from its own videos (positives are within a video, so
partition by video), an all-reduce of the query-encoder gradients, the momentum key encoder updated
identically on every worker, and the FIFO queue of keys filled with the all-gathered keys of every
worker's batch (as in MoCo's ShuffleBN/all_gather setup), with the sampler seeded per rank.  The
reference training is not bit-reproducible under that change of batch composition; it is not
implemented here.

Ray is an optional dependency (``pip install ray``), imported only when this module is used.
Ray shards run the CPU engine; for the GPUs of one host, ``llsh_index.ShardedIndex`` places shards
on the devices and scores them from one process.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from ._validation import PATH_TYPES, as_list, check_features, check_int_range
from .errors import NPZ_READ_ERRORS, ConfigError, IndexFormatError, InvalidInputError, LLSHError, NotFittedError
from .index import LearnableLSHIndex
from .sharded import _ShardScoring, _shard_files, check_shards_folder

__all__ = ["build_distributed", "load_distributed", "DistributedIndex", "ShardPool", "main"]

Partition = Union[np.ndarray, Any, str, os.PathLike, Callable[[], Any]]  # Any: a ray.ObjectRef

#: seconds the shard actors get to start and warm up (import torch, ~3 s each) before ConfigError
READY_TIMEOUT = 120.0


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("llsh_index.distributed needs Ray: pip install ray") from exc
    return ray


def _load_partition(part):
    """Materialises a partition on the worker: array, path (.npy, memory-mapped) or callable."""
    if isinstance(part, (str, os.PathLike)):
        return np.load(os.fspath(part), mmap_mode="r")
    if callable(part) and not isinstance(part, np.ndarray):
        return part()
    return part


class _Shard:
    """Body of the shard actor: one LearnableLSHIndex kept in the worker's memory (none while idle in a pool)."""

    def __init__(self, n_threads: Optional[int] = None):
        import torch

        if n_threads:
            torch.set_num_threads(int(n_threads))
        self.n_threads = n_threads
        self.index: Optional[LearnableLSHIndex] = None

    def ready(self) -> int:
        """Warms the process (torch's GEMM, the native engine) with a tiny index; returns its pid."""
        LearnableLSHIndex(8, n_tables=1, n_bits=4).add(np.zeros((16, 8), np.float32)).score(np.ones((1, 8), np.float32))
        return os.getpid()

    def reset(self) -> bool:
        self.index = None  # back in the pool: the shard's memory is released
        return True

    def build(self, layers, part):
        import time

        t0 = time.perf_counter()
        # `layers` arrives resolved from the object store; copy so shards never share state
        n = self.n_threads
        self.index = layers.empty_like() if n is None else layers.empty_like(n_threads=int(n))
        x = _load_partition(part)
        if not (getattr(x, "ndim", None) == 2 and x.shape[0] == 0 and x.shape[1] == self.index.dim):
            self.index.add(x)  # an empty partition of the right width is an empty shard, as in ShardedIndex
        return self.index.ntotal, time.perf_counter() - t0

    def load(self, path: str) -> int:
        self.index = LearnableLSHIndex.load(path)
        return self.index.ntotal

    def ntotal(self) -> int:
        return self.index.ntotal

    def hash_queries(self, queries):
        return self.index.hash_queries(queries)

    def partial_scores(self, codes, keys, mode: Optional[str]):
        return self.index.partial_scores(mode=mode, query_codes=codes, query_keys=keys)

    def save(self, path: str) -> str:
        """Writes the shard; the SHA-256 of the bytes it wrote (the driver's shards.json)."""
        import hashlib

        digest = hashlib.sha256()
        self.index._save(path, digest)
        return digest.hexdigest()

    def get_index(self) -> LearnableLSHIndex:
        return self.index

    def memory_bytes(self) -> int:
        return self.index.memory_bytes()

    def weight(self) -> np.ndarray:
        return self.index.encoder.weight.detach().cpu().numpy()

    def settings(self) -> tuple:
        return self.index.mode, self.index.miss_value, self.index.store_codes, self.index.code_dtype


_actor_classes = {}


def _actor_class():
    ray = _ray()
    if "shard" not in _actor_classes:
        _actor_classes["shard"] = ray.remote(_Shard)
    return _actor_classes["shard"]


class ShardPool:
    """Warm shard actors that successive builds and loads reuse.

    Starting an actor starts a Python process that imports torch (about 3 s here), which a build
    on fresh actors pays every time.  A pool starts `size` actors once (and warms them); then
    ``build_distributed(..., pool=pool)`` / ``load_distributed(..., pool=pool)`` take free actors
    from it, and ``DistributedIndex.shutdown()`` drops the shards and hands the actors back.
    ``pool.shutdown()`` ends every actor, including those of indexes still using them.

        with ShardPool(4, num_cpus_per_shard=1) as pool:
            for parts in days:
                dist = build_distributed(layers, parts, pool=pool)
                ...
                dist.shutdown()          # back to the pool, not killed

    num_cpus_per_shard, n_threads, resources, check_resources, ready_timeout: as for
    build_distributed, fixed for the pool's actors.  ``ShardPool(4, num_cpus_per_shard=1)`` on a
    2-CPU cluster raises ConfigError (4 CPU asked, 2 in the cluster) instead of waiting forever;
    ``num_cpus_per_shard=0.5`` fits.
    """

    def __init__(self, size: int, *, num_cpus_per_shard: Optional[float] = None, n_threads: Optional[int] = None,
                 resources: Optional[dict] = None, check_resources: bool = True,
                 ready_timeout: Optional[float] = READY_TIMEOUT):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ConfigError(f"ShardPool: size expected an integer >= 1, got {size!r}")
        ray = _ray()
        if not ray.is_initialized():
            ray.init()
        self.n_threads = n_threads
        self._actors = _start_actors(int(size), "ShardPool", num_cpus_per_shard, n_threads, resources,
                                     check_resources, ready_timeout)  # up and warm, or ConfigError
        self._free = list(self._actors)
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._actors)

    @property
    def n_free(self) -> int:
        return len(self._free)

    def _acquire(self, k: int, what: str) -> list:
        if self._closed:
            raise ConfigError(f"{what}: the ShardPool is shut down; make a new one")
        if k > len(self._free):
            raise ConfigError(f"{what}: expected at most {len(self._free)} shards ({len(self._free)} of the pool's "
                              f"{self.size} actors are free), got {k}; shut down an index built on this pool, or "
                              "make a bigger pool")
        taken, self._free = self._free[:k], self._free[k:]
        return taken

    def _release(self, actors: list) -> None:
        if self._closed:
            return
        _ray().get([a.reset.remote() for a in actors])
        self._free.extend(actors)

    def shutdown(self) -> None:
        """Ends every actor of the pool (indexes built on it become unusable)."""
        ray = _ray()
        for a in self._actors:
            ray.kill(a)
        self._actors, self._free, self._closed = [], [], True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def __repr__(self) -> str:
        return f"ShardPool(size={self.size}, free={self.n_free}, closed={self._closed})"


class DistributedIndex(_ShardScoring):
    """Shards of one index held by Ray actors; see the module docstring.

    Build it with build_distributed() or load_distributed().  score()/table_distances() equal the
    single-machine index over the concatenated partitions.
    """

    def __init__(self, template: LearnableLSHIndex, actors: list, counts: Sequence[int],
                 build_seconds: Optional[Sequence[float]] = None, pool: Optional[ShardPool] = None):
        self._template = template  # the hash layers and settings, no tables: hashes the queries, combines
        self._pool = pool
        self._actors = list(actors)
        self._counts = [int(c) for c in counts]
        #: per shard, seconds its worker spent loading + hashing + building (not the actor start)
        self.build_seconds = None if build_seconds is None else [float(t) for t in build_seconds]

    # ------------------------------------------------------------------ info
    @property
    def n_shards(self) -> int:
        return len(self._actors)

    @property
    def ntotal(self) -> int:
        return sum(self._counts)

    @property
    def shard_sizes(self) -> List[int]:
        return list(self._counts)

    @property
    def mode(self) -> str:
        return self._template.mode

    def memory_bytes(self) -> List[int]:
        """Bytes of the tables held by each shard actor."""
        return _ray().get([a.memory_bytes.remote() for a in self._actors])

    # ------------------------------------------------------------------ scoring
    @property
    def _combiner(self) -> LearnableLSHIndex:
        return self._template

    def _submit(self, codes, keys, mode):
        """Every shard on one batch of hashed queries: the codes and keys go to the object store once."""
        ray = _ray()
        c = codes if isinstance(codes, ray.ObjectRef) else ray.put(codes)
        k = keys if isinstance(keys, ray.ObjectRef) else ray.put(keys)
        # an empty shard has nothing to add (its partial_scores would be NotFittedError), as in ShardedIndex
        return [a.partial_scores.remote(c, k, mode) for a, n in zip(self._actors, self._counts) if n]

    def _start_partials(self, codes, keys, mode):
        futures = self._submit(codes, keys, mode)
        return lambda: _ray().get(futures)

    def _run(self, queries, mode, return_distances, query_batch, n_probes=1, miss_probes=0, reduce="min"):
        n_probes, miss_probes, plain = self._check_run(n_probes, miss_probes, reduce)
        if not self._actors:
            raise ConfigError("score: this DistributedIndex is shut down")
        if self.ntotal == 0:
            raise NotFittedError("score: the distributed index is empty; every shard holds no items")
        mode = self._template.mode if mode is None else mode
        if mode == "mean" and not self._template.store_codes:  # checked here, not as a worker's traceback
            raise ConfigError("mode: 'mean' needs the per-item codes, but these shards keep bucket statistics "
                              "only (store_codes=False); use 'light' or 'squared'")
        ray = _ray()
        if isinstance(queries, ray.ObjectRef) and not plain:
            # the probe keys are made from the codes: shard 0 hashes, the driver takes the codes back
            codes, keys = ray.get(list(self._actors[0].hash_queries.options(num_returns=2).remote(queries)))
            return self._probed(codes, keys, mode, return_distances, n_probes, miss_probes, reduce)
        if isinstance(queries, ray.ObjectRef):
            # queries already in the object store: shard 0 hashes them, the codes never pass the driver
            codes, keys = self._actors[0].hash_queries.options(num_returns=2).remote(queries)
            parts = self._start_partials(codes, keys, mode)()
            return self._combine(parts, ray.get(codes) if mode == "light" else None, mode, return_distances, reduce)
        queries = self._template._features(queries, "queries")  # typed errors here, not IndexError below
        n = int(queries.shape[0])
        step = n if query_batch is None else check_int_range(query_batch, "query_batch", 1)
        # the driver hashes each round once (shards receive b*r floats + b keys per query, not d features)
        rounds = [queries[i:i + step] for i in range(0, n, step)]
        return self._pipelined(rounds, self._template.hash_queries, mode, return_distances, n_probes, miss_probes,
                               reduce, plain)

    def table_distances(self, queries, mode: Optional[str] = None, *, query_batch: Optional[int] = 100_000,
                        n_probes: int = 1, miss_probes: int = 0):
        """(M, n_tables) float32 distances, equal to the single index's table_distances()."""
        return self._run(queries, mode, True, query_batch, n_probes, miss_probes)

    def score(self, queries, mode: Optional[str] = None, *, query_batch: Optional[int] = 100_000,
              n_probes: int = 1, miss_probes: int = 0, reduce: str = "min") -> np.ndarray:
        """(M,) float32 anomaly scores (minimum, or mean, over tables), equal to the single index's score().

        The driver hashes the queries in rounds of `query_batch` rows and puts each round's codes
        and keys in the object store once (b*r*4 + b*8 bytes per query, whatever d is), which also
        bounds the partial sums the driver receives per round.  Queries given as a Ray ObjectRef are
        hashed by the first shard's worker instead.  n_probes, miss_probes, reduce: as
        LearnableLSHIndex.score (multi-probe, probing on a miss, the mean over tables; one round trip to
        the shards per probe rank).
        """
        return self._run(queries, mode, False, query_batch, n_probes, miss_probes, reduce)

    # ------------------------------------------------------------------ persistence
    def save_shards(self, folder) -> List[str]:
        """Each worker saves its shard to folder/shard_00000.llsh, ...; returns the paths.

        On a cluster `folder` must be a path every worker can write (a shared filesystem).  As
        ShardedIndex.save_shards: a path that is not a folder is WritePathError, shards.json (the files
        and their SHA-256) is written last, and shard files of an earlier, larger save there are removed.
        """
        from .sharded import _numbered_shards, make_shards_folder, write_manifest

        folder = make_shards_folder(folder)
        paths = [str((folder / f"shard_{i:05d}.llsh").resolve()) for i in range(self.n_shards)]
        write_manifest(folder, _ray().get([a.save.remote(p) for a, p in zip(self._actors, paths)]))
        for number, stale in _numbered_shards(folder):
            if number >= self.n_shards:
                stale.unlink()
        return paths

    def gather(self) -> LearnableLSHIndex:
        """One LearnableLSHIndex holding every shard (merge_all, in shard order): tests and small data only."""
        shards = _ray().get([a.get_index.remote() for a in self._actors])
        return LearnableLSHIndex.merge_all(shards)

    def shutdown(self) -> None:
        """Ends the shard actors, or hands them back to their ShardPool (the shards are lost unless saved)."""
        actors, self._actors, self._counts = self._actors, [], []
        if self._pool is not None:
            self._pool._release(actors)
            return
        ray = _ray()
        for a in actors:
            ray.kill(a)

    def __repr__(self) -> str:
        return (f"DistributedIndex(n_shards={self.n_shards}, ntotal={self.ntotal}, dim={self._template.dim}, "
                f"n_tables={self._template.n_tables}, n_bits={self._template.n_bits}, mode={self.mode!r})")


_RESOURCE_UNIT = 10_000  # Ray counts resource quantities in fixed point, to 0.0001
_RAY_RESERVED = ("CPU", "GPU", "memory", "object_store_memory")


def _is_quantity(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) \
        and v >= 0


def _actor_options(num_cpus: Optional[float], resources: Optional[dict], what: str = "build_distributed"):
    """Ray options of a shard actor; the arguments are checked here (ConfigError), not by Ray."""
    opts = {}
    if num_cpus is not None:
        if not _is_quantity(num_cpus):
            raise ConfigError(f"{what}: num_cpus_per_shard expected a number >= 0 (fractions are allowed) or None, "
                              f"got {num_cpus!r}")
        opts["num_cpus"] = float(num_cpus)
    if resources is not None and not isinstance(resources, dict):
        raise ConfigError(f"{what}: resources expected a dict of custom resource -> amount, got "
                          f"{type(resources).__name__}")
    if resources:
        for name, amount in resources.items():
            if name in _RAY_RESERVED:
                raise ConfigError(f"{what}: resources expected custom resources only, got {name!r}; CPUs are "
                                  "num_cpus_per_shard (Ray shards run the CPU engine)")
            if not isinstance(name, str) or not _is_quantity(amount):
                raise ConfigError(f"{what}: resources expected str -> number >= 0, got {name!r}: {amount!r}")
        opts["resources"] = {name: float(amount) for name, amount in resources.items()}
    return opts


def _actor_demand(opts: dict):
    """(held, placement): what one shard actor holds for its life and what a node needs to place it.

    Ray's rules (ray/actor.py): an actor given no resources holds none and needs 1 free CPU only
    to be placed (so any number of them share a node with a CPU); one given any resource holds
    num_cpus CPUs (1 when not given) plus those resources.
    """
    held = dict(opts.get("resources", {}))
    if "num_cpus" not in opts and not held:
        return {}, {"CPU": 1.0}
    held["CPU"] = opts.get("num_cpus", 1.0)
    return held, held


def _demand_keys(held: dict, placement: dict) -> list:
    """The resources a shard actor asks for, CPU first, as the messages list them."""
    return sorted(set(held) | set(placement), key=lambda r: (r != "CPU", r))


def _live_nodes() -> List[dict]:
    """Each live node's total resources."""
    return [dict(n.get("Resources") or {}) for n in _ray().nodes() if n.get("Alive")]


def _units(x) -> int:
    return int(round(float(x) * _RESOURCE_UNIT))


def _shards_that_fit(held: dict, placement: dict, nodes: List[dict]) -> float:
    """How many actors demanding `held` (and `placement` to be placed) the nodes' totals can hold."""
    n = 0
    for node in nodes:
        if any(_units(node.get(r, 0)) < _units(q) for r, q in placement.items()):
            continue
        per_node = [_units(node.get(r, 0)) // _units(q) for r, q in held.items() if _units(q) > 0]
        if not per_node:
            return float("inf")
        n += min(per_node)
    return n


def _fmt(x) -> str:
    return f"{float(x):g}"


def _amounts(d: dict, keys) -> str:
    return ", ".join(f"{_fmt(d.get(r, 0))} {r}" for r in keys)


def _check_cluster(k: int, what: str, opts: dict) -> None:
    """ConfigError when k shard actors with these options can never all be placed on the cluster's
    live nodes as they stand (totals, not what is free now: busy resources are freed eventually)."""
    ray = _ray()
    held, placement = _actor_demand(opts)
    nodes = _live_nodes()
    fit = _shards_that_fit(held, placement, nodes)
    if fit >= k:
        return
    total = ray.cluster_resources()
    keys = _demand_keys(held, placement)
    largest = {r: max([n.get(r, 0) for n in nodes] or [0]) for r in keys}
    if held:
        asked = (f"{k} shards x ({_amounts(held, keys)}) ask for {_amounts({r: k * q for r, q in held.items()}, keys)}"
                 " in all")
    else:  # Ray's default: nothing held, 1 CPU to place each actor
        asked = f"{k} shards each need a node with {_amounts(placement, keys)} to be placed (Ray's default)"
    short = [r for r in keys if _units(k * held.get(r, 0)) > _units(total.get(r, 0))
             or _units(placement.get(r, 0)) > _units(largest[r])] or keys  # [] when only the packing fails
    hint = []
    if "CPU" in short and held.get("CPU", 0) > 0:
        cpus = np.floor(total.get("CPU", 0) / k * 100) / 100
        if cpus > 0 and _shards_that_fit(dict(held, CPU=cpus), dict(held, CPU=cpus), nodes) >= k:
            hint.append(f"a smaller num_cpus_per_shard (fractions are allowed: {_fmt(cpus)} fits {k} shards)")
        else:
            hint.append("a smaller num_cpus_per_shard (fractions are allowed)")
    for r in short:
        if r != "CPU":
            hint.append(f"less {r} per shard" if total.get(r, 0) > 0 else f"no {r} (no node has any)")
    if fit > 0:
        hint.append(f"at most {int(fit)} shards")
    elif "CPU" in short and not held:
        hint.append("num_cpus_per_shard=0 (no CPU to place)")
    raise ConfigError(f"{what}: {asked}, but the Ray cluster has {_amounts(total, keys)} in total (largest node: "
                      f"{_amounts(largest, keys)}), so {int(fit)} such shards fit; ask for {' or '.join(hint)}. "
                      "On a cluster whose autoscaler adds nodes, pass check_resources=False")


def _wait_ready(actors: list, what: str, opts: dict, timeout: Optional[float]) -> None:
    """Waits until every actor is up and warm; ConfigError naming what the pending ones wait for after `timeout` s."""
    ray = _ray()
    refs = [a.ready.remote() for a in actors]
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    ray.get(done)  # an actor that died at start: its own error first
    if not pending:
        return
    held, placement = _actor_demand(opts)
    keys = _demand_keys(held, placement)
    each = (f"each holds {_amounts(held, keys)}" if held else
            f"each needs {_amounts(placement, keys)} free to be placed (Ray's default, held while placing only)")
    if _shards_that_fit(held, placement, _live_nodes()) < len(actors):
        each += ", more than the cluster's live nodes can hold: it must grow"
    raise ConfigError(f"{what}: {len(pending)} of {len(actors)} shard actors not started after {_fmt(timeout)} s "
                      f"({each}); the Ray cluster has {_amounts(ray.cluster_resources(), keys)} in total, "
                      f"{_amounts(ray.available_resources(), keys)} free now. The pending actors wait for resources "
                      "that other actors or tasks hold, or for nodes still starting; free them, ask for fewer shards "
                      "or a smaller num_cpus_per_shard, or pass a longer ready_timeout (None waits forever)")


def _start_actors(k: int, what: str, num_cpus: Optional[float], n_threads: Optional[int], resources: Optional[dict],
                  check_resources: bool, ready_timeout: Optional[float]) -> list:
    """k fresh shard actors, up and warm; ConfigError rather than a silent wait for resources."""
    if ready_timeout is not None and (not _is_quantity(ready_timeout) or ready_timeout <= 0):
        raise ConfigError(f"{what}: ready_timeout expected seconds > 0 or None, got {ready_timeout!r}")
    opts = _actor_options(num_cpus, resources, what)
    if check_resources:
        _check_cluster(k, what, opts)
    ray = _ray()
    Shard = _actor_class().options(**opts)
    actors = [Shard.remote(n_threads) for _ in range(k)]
    try:
        _wait_ready(actors, what, opts, ready_timeout)
    except BaseException:
        for a in actors:  # also cancels those Ray still queues
            ray.kill(a)
        raise
    return actors


def _take_actors(k: int, pool: Optional[ShardPool], what: str, num_cpus: Optional[float], n_threads: Optional[int],
                 resources: Optional[dict], check_resources: bool = True,
                 ready_timeout: Optional[float] = READY_TIMEOUT) -> list:
    """k shard actors: free ones of `pool`, or fresh ones started with these options."""
    if pool is None:
        return _start_actors(k, what, num_cpus, n_threads, resources, check_resources, ready_timeout)
    if not isinstance(pool, ShardPool):
        raise ConfigError(f"{what}: pool expected a ShardPool, got {type(pool).__name__}")
    given = [n for n, v in (("num_cpus_per_shard", num_cpus), ("n_threads", n_threads), ("resources", resources))
             if v is not None]
    if given:
        raise ConfigError(f"{what}: with a pool, expected no {', '.join(given)} (the pool's actors were started with "
                          "their own; pass them to ShardPool)")
    return pool._acquire(k, what)


def _give_back(actors: list, pool: Optional[ShardPool]) -> None:
    """After a failed build or load: actors go back to the pool, or are ended."""
    if pool is not None:
        try:
            pool._release(actors)
        except Exception:  # a dead actor: the caller's own error is the one to report
            pass
    else:
        ray = _ray()
        for a in actors:
            ray.kill(a)


def build_distributed(layers: LearnableLSHIndex, partitions: Sequence[Partition], *, mode: Optional[str] = None,
                      store_codes: Optional[bool] = None, num_cpus_per_shard: Optional[float] = None,
                      n_threads: Optional[int] = None, resources: Optional[dict] = None,
                      pool: Optional[ShardPool] = None, check_resources: bool = True,
                      ready_timeout: Optional[float] = READY_TIMEOUT) -> DistributedIndex:
    """Builds one shard per partition on Ray actors with the hash layers of `layers`.

    layers: a LearnableLSHIndex with hash layers (trained or not); its tables, if any, are ignored.
    partitions: numpy arrays, Ray ObjectRefs, .npy paths (loaded on the worker with mmap) or
        picklable callables returning an array; shard i's items come after those of shards < i.
    mode, store_codes: overrides of the layers' settings for every shard (e.g. "light", False).
    num_cpus_per_shard: CPUs Ray reserves per actor, fractions allowed (None: Ray's default - no
        CPU held, so more actors than CPUs coexist - or 1 CPU when `resources` is given);
        n_threads: torch and engine threads per shard (None: the defaults).
    resources: custom Ray resources per actor (e.g. {"node:10.0.0.2": 0.01} to pin a node).
    pool: a ShardPool whose warm actors hold the shards (no actor start-up); the three options
        above are then the pool's (and the two below are not used).
    check_resources: before starting actors, compare what they will hold (shards x
        num_cpus_per_shard CPUs, each resource of `resources`) with the totals of the cluster's live
        nodes, and raise ConfigError (what was asked, what the cluster has) if they can never all be
        placed.  Pass False on a cluster whose autoscaler adds nodes to fit.
    ready_timeout: seconds the actors get to start (120; None: no limit); ConfigError, naming the
        pending actors' resources, if some are still waiting after that (the actors are ended).
    Ray must be initialised (ray.init) or it is started locally.
    """
    ray = _ray()
    if not isinstance(layers, LearnableLSHIndex):
        raise ConfigError(f"build_distributed: expected a LearnableLSHIndex as layers, got {type(layers).__name__}")
    partitions = as_list(partitions, "build_distributed", "partitions")  # one .npy path is one partition
    if not partitions:
        raise ConfigError("build_distributed: expected at least one partition, got none")
    if layers.encoder is None:  # as ShardedIndex: NotFittedError
        raise NotFittedError("build_distributed: the layers have no hash layers yet (no fit(), or dim unknown)")
    overrides = {}
    if mode is not None:
        overrides["mode"] = mode
    if store_codes is not None:
        overrides["store_codes"] = store_codes
    template = layers.empty_like(**overrides)
    if not ray.is_initialized():
        ray.init()
    actors = _take_actors(len(partitions), pool, "build_distributed", num_cpus_per_shard, n_threads, resources,
                          check_resources, ready_timeout)
    layers_ref = ray.put(template)  # broadcast once; every actor receives the same object
    try:
        built = ray.get([a.build.remote(layers_ref, p) for a, p in zip(actors, partitions)])
    except BaseException:
        _give_back(actors, pool)
        raise
    return DistributedIndex(template, actors, [c for c, _ in built], [t for _, t in built], pool=pool)


def load_distributed(paths: Sequence[str], *, num_cpus_per_shard: Optional[float] = None,
                     resources: Optional[dict] = None, pool: Optional[ShardPool] = None,
                     check_resources: bool = True, ready_timeout: Optional[float] = READY_TIMEOUT) -> DistributedIndex:
    """Shard actors that each load one file written by save_shards() (paths readable by the workers),
    or those of the folder save_shards() wrote (its shards.json checked, as ShardedIndex.load(folder)
    does); with `pool`, free actors of that ShardPool load them.  num_cpus_per_shard, resources,
    check_resources, ready_timeout: as for build_distributed."""
    ray = _ray()
    if isinstance(paths, PATH_TYPES) and os.path.isdir(os.fsdecode(paths)):
        paths = [str(p.resolve()) for p in _shard_files(Path(os.fsdecode(paths)))]
    paths = [os.fspath(p) for p in as_list(paths, "load_distributed", "shard files")]
    if not paths:
        raise ConfigError("load_distributed: expected at least one shard file, got none")
    if not ray.is_initialized():
        ray.init()
    head = LearnableLSHIndex.load(paths[0])  # the driver keeps the layers only
    template = head.empty_like()
    del head
    actors = _take_actors(len(paths), pool, "load_distributed", num_cpus_per_shard, None, resources,
                          check_resources, ready_timeout)
    try:
        counts = ray.get([a.load.remote(p) for a, p in zip(actors, paths)])
        weights = ray.get([a.weight.remote() for a in actors])
        settings = ray.get([a.settings.remote() for a in actors])
    except BaseException:
        _give_back(actors, pool)
        raise
    if any(not np.array_equal(w, weights[0]) for w in weights[1:]):
        _give_back(actors, pool)
        raise ConfigError("load_distributed: the shard files do not share the same hash layers")
    if any(st != settings[0] for st in settings[1:]):  # as ShardedIndex.from_shards refuses them
        _give_back(actors, pool)
        raise ConfigError(f"load_distributed: every shard must have the same (mode, miss_value, store_codes, "
                          f"code_dtype), got {settings}")
    return DistributedIndex(template, actors, counts, pool=pool)


# ---------------------------------------------------------------------- entry point
CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A host:port (or ray://host:port) address must answer a TCP connection within `timeout` seconds:
    with nothing listening there, ray.init waits for its own timeouts (minutes) instead of failing.
    'local' and 'auto' are Ray's to resolve; an address without a port is Ray's to refuse."""
    import socket

    if address in ("local", "auto"):
        return
    host_port = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        return
    if not 0 < int(port) < 65536:
        raise ConfigError(f"--address {address}: expected a port 1..65535, got {port}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError, OverflowError) as exc:  # refused, unreachable, no such name, timed out
        raise ConfigError(f"--address {address}: expected a running Ray cluster there ('local' starts one), got no "
                          f"connection to {host}:{port} within {timeout:g} s ({exc})") from None


def main(argv=None) -> int:
    from .cli import nonnegative_float, nonnegative_int, positive_float, positive_int

    p = argparse.ArgumentParser(prog="python -m llsh_index.distributed",
                                description="Build an LLSH index over Ray workers and score queries.")
    p.add_argument("--address", default="local", help="'auto' (existing cluster), 'local' (start Ray here) "
                                                       "or a ray:// / host:port address, refused at once where "
                                                       "nothing accepts a connection within 5 s (default local)")
    p.add_argument("--train", required=True, help="comma-separated .npy files, one shard each (read by the workers)")
    p.add_argument("--test", required=True, help=".npy of (M, d) queries (read by the driver)")
    p.add_argument("--out", required=True, help="output .npy of (M,) scores (.npy is added if missing, as np.save does)")
    p.add_argument("--layers", help="a .llsh file whose hash layers (e.g. trained by `llsh-index fit`) are used; "
                                    "else untrained LSH")
    # None when left out, so a value contradicting --layers is refused (as `llsh-index build --model`)
    p.add_argument("--n-tables", type=positive_int, default=None,
                   help="b (default 8); with --layers: the layers' (a different value is refused)")
    p.add_argument("--n-bits", type=positive_int, default=None,
                   help="r (default 32); with --layers: the layers' (a different value is refused)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the untrained layers, 0..2**32-1 (default 0); not with --layers, whose layers "
                        "are fixed")
    p.add_argument("--mode", choices=["mean", "light", "squared"],
                   help="scoring mode (default: the layers', else mean); light and squared keep bucket statistics "
                        "only (store_codes=False)")
    p.add_argument("--probes", type=positive_int, default=1,
                   help="buckets probed per table (default 1, the paper; as `llsh-index score --probes`)")
    p.add_argument("--miss-probes", type=nonnegative_int, default=0,
                   help="probes per table for a query that misses every table (default 0, off; else more than "
                        "--probes)")
    p.add_argument("--reduce", choices=["min", "mean"], default="min",
                   help="over the tables: min (default, the paper) or mean over the tables whose bucket exists")
    p.add_argument("--cpus-per-shard", type=positive_float, default=None,
                   help="CPUs each shard actor holds (fractions allowed)")
    p.add_argument("--no-resource-check", action="store_true",
                   help="start the actors even if the cluster as it stands cannot hold them (an autoscaler adds nodes)")
    p.add_argument("--ready-timeout", type=nonnegative_float, default=READY_TIMEOUT,
                   help=f"seconds the shard actors get to start (default {READY_TIMEOUT:g}; 0: no limit)")
    p.add_argument("--save-shards", help="folder where each worker saves its shard")
    a = p.parse_args(argv)
    try:
        return _run_main(a)
    except (LLSHError, FileNotFoundError, ValueError) as exc:  # numpy's own: a .npy that is not one
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # Ray's own (an actor that died at start): one line too
        if type(exc).__module__.split(".")[0] != "ray":
            raise
        print(f"error: Ray: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _read_npy(path: str, option: str, mmap_mode: Optional[str] = None) -> np.ndarray:
    """The array of a .npy file given as `option`; InvalidInputError naming the file otherwise."""
    try:
        x = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise
    except NPZ_READ_ERRORS as exc:  # numpy's words for a file that is no .npy do not name it
        raise InvalidInputError(f"{option} {path}: expected a readable .npy array, got a file numpy cannot load "
                                f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(x, np.ndarray):  # an .npz archive: np.load gives an NpzFile
        names = ", ".join(x.files)
        x.close()
        raise InvalidInputError(f"{option} {path}: expected a .npy array, got an .npz archive (arrays: {names}); "
                                "save the array alone with np.save")
    return x


def _layers_from_args(a, dim: int) -> LearnableLSHIndex:
    """The empty index every shard copies: --layers' hash layers (loaded and checked on the driver,
    before Ray starts) or untrained ones, with --mode applied."""
    # light and squared keep bucket statistics only; mean needs the codes (a light file's too)
    settings = {} if a.mode is None else {"mode": a.mode, "store_codes": a.mode == "mean"}
    if not a.layers:
        given = {k: v for k, v in (("n_tables", a.n_tables), ("n_bits", a.n_bits)) if v is not None}
        return LearnableLSHIndex(dim, seed=0 if a.seed is None else a.seed, **given, **settings)
    # as `llsh-index build --model`: the file fixes the layers, so there is nothing to seed and b, r must agree
    if a.seed is not None:
        raise ConfigError(f"--seed {a.seed}: the hash layers come from --layers {a.layers}, so there is nothing "
                          "to seed; leave --seed out")
    try:
        layers = LearnableLSHIndex.load(a.layers)
    except IndexFormatError as exc:  # a file that is no index: say which option gave it
        raise IndexFormatError(f"--layers {exc}") from None
    for option, value, have in (("--n-tables", a.n_tables, layers.n_tables), ("--n-bits", a.n_bits, layers.n_bits)):
        if value is not None and value != have:
            raise ConfigError(f"{option} {value} does not match --layers {a.layers} ({have}); leave it out, or "
                              "fit layers of that size")
    if layers.dim != dim:
        raise InvalidInputError(f"--layers {a.layers}: expected hash layers of the --train features' dimension "
                                f"{dim}, got layers of dimension {layers.dim}")
    return layers.empty_like(**settings)


def _run_main(a) -> int:
    from .io import atomic_write, check_write_path
    from .probing import check_probes

    # Every check here comes before Ray starts and the shards build: a mistake costs no time
    if os.path.isdir(a.out):  # not a sibling "<folder>.npy" written beside it
        raise InvalidInputError(f"--out {a.out}: is a folder; expected the path of the .npy score file")
    if not a.out.endswith(".npy"):  # as np.save names it
        a.out += ".npy"
    check_write_path(a.out)  # before any work: a folder or a device is refused now, not after the build
    if a.save_shards:
        check_shards_folder(a.save_shards, "--save-shards")
    check_probes(a.probes, a.miss_probes, ("--probes", "--miss-probes"))
    train = [s for s in a.train.split(",") if s]
    if a.layers and not os.path.isfile(a.layers):
        raise FileNotFoundError(f"--layers: expected a .llsh index file, not found: {a.layers}")
    missing = [s for s in train + [a.test] if not os.path.isfile(s)]
    if missing or not train:
        raise FileNotFoundError(f"expected .npy files, not found: {missing or '(no --train file)'}")
    queries = _read_npy(a.test, "--test")
    # the partitions' headers, read here: a worker's error would come back as a Ray traceback not naming the file
    dims = {}
    for s in train:
        head = _read_npy(s, "--train", mmap_mode="r")
        if head.ndim != 2 or head.dtype.kind != "f":
            raise InvalidInputError(f"--train {s}: expected a 2-D float array (rows, d), got {head.dtype} of shape "
                                    f"{head.shape}")
        dims[s] = int(head.shape[1])
    if len(set(dims.values())) > 1 or (queries.ndim == 2 and queries.shape[1] not in dims.values()):
        raise InvalidInputError(f"expected one feature dimension for --train and --test, got "
                                f"{dims} and --test {a.test} of shape {queries.shape}")
    dim = dims[train[0]]
    check_features(queries, f"--test {a.test}", dim)  # 1-D, integer or empty: refused as score() would, later
    layers = _layers_from_args(a, dim)
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        _check_reachable(a.address)
        try:
            ray.init() if a.address == "local" else ray.init(address=a.address)
        except (ConnectionError, ValueError) as exc:  # Ray's: no cluster there (a built-in error), a bad address
            raise ConfigError(f"--address {a.address}: expected a running Ray cluster there ('local' starts one), "
                              f"got {type(exc).__name__}: {exc}") from exc
    dist = None
    try:
        # absolute paths: the workers may not share the driver's working directory
        dist = build_distributed(layers, [os.path.abspath(s) for s in train], num_cpus_per_shard=a.cpus_per_shard,
                                 check_resources=not a.no_resource_check, ready_timeout=a.ready_timeout or None)
        print(f"built {dist}", file=sys.stderr)
        if a.save_shards:
            for path in dist.save_shards(a.save_shards):
                print(f"saved {path}", file=sys.stderr)
        scores = dist.score(queries, n_probes=a.probes, miss_probes=a.miss_probes, reduce=a.reduce)
        with atomic_write(a.out) as f:
            np.save(f, scores)
        print(f"wrote {a.out}: {scores.shape[0]} scores", file=sys.stderr)
    finally:
        if dist is not None:
            dist.shutdown()
        if started:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
