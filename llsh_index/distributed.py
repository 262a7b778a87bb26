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

from ._validation import as_list, check_int_range
from .errors import ConfigError, NotFittedError
from .index import LearnableLSHIndex
from .sharded import _ShardScoring

__all__ = ["build_distributed", "load_distributed", "DistributedIndex", "ShardPool", "main"]

Partition = Union[np.ndarray, Any, str, os.PathLike, Callable[[], Any]]  # Any: a ray.ObjectRef


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
        self.index.add(x)
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

    def save(self, path: str) -> int:
        return self.index.save(path)

    def get_index(self) -> LearnableLSHIndex:
        return self.index

    def memory_bytes(self) -> int:
        return self.index.memory_bytes()

    def weight(self) -> np.ndarray:
        return self.index.encoder.weight.detach().cpu().numpy()


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

    num_cpus_per_shard, n_threads, resources: as for build_distributed, fixed for the pool's actors.
    """

    def __init__(self, size: int, *, num_cpus_per_shard: Optional[float] = None, n_threads: Optional[int] = None,
                 resources: Optional[dict] = None):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ConfigError(f"ShardPool: size expected an integer >= 1, got {size!r}")
        ray = _ray()
        if not ray.is_initialized():
            ray.init()
        self.n_threads = n_threads
        Shard = _actor_class().options(**_actor_options(num_cpus_per_shard, resources))
        self._actors = [Shard.remote(n_threads) for _ in range(int(size))]
        ray.get([a.ready.remote() for a in self._actors])  # wait until every process is up and warm
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
        return [a.partial_scores.remote(c, k, mode) for a in self._actors]

    def _start_partials(self, codes, keys, mode):
        futures = self._submit(codes, keys, mode)
        return lambda: _ray().get(futures)

    def _run(self, queries, mode, return_distances, query_batch, n_probes=1, miss_probes=0, reduce="min"):
        n_probes, miss_probes, plain = self._check_run(n_probes, miss_probes, reduce)
        if not self._actors:
            raise ConfigError("score: this DistributedIndex is shut down")
        mode = self._template.mode if mode is None else mode
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

        On a cluster `folder` must be a path every worker can write (a shared filesystem).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [str((folder / f"shard_{i:05d}.llsh").resolve()) for i in range(self.n_shards)]
        _ray().get([a.save.remote(p) for a, p in zip(self._actors, paths)])
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


def _actor_options(num_cpus: Optional[float], resources: Optional[dict]):
    opts = {}
    if num_cpus is not None:
        opts["num_cpus"] = num_cpus
    if resources:
        opts["resources"] = dict(resources)
    return opts


def _take_actors(k: int, pool: Optional[ShardPool], what: str, num_cpus: Optional[float], n_threads: Optional[int],
                 resources: Optional[dict]) -> list:
    """k shard actors: free ones of `pool`, or fresh ones started with these options."""
    if pool is None:
        Shard = _actor_class().options(**_actor_options(num_cpus, resources))
        return [Shard.remote(n_threads) for _ in range(k)]
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
                      pool: Optional[ShardPool] = None) -> DistributedIndex:
    """Builds one shard per partition on Ray actors with the hash layers of `layers`.

    layers: a LearnableLSHIndex with hash layers (trained or not); its tables, if any, are ignored.
    partitions: numpy arrays, Ray ObjectRefs, .npy paths (loaded on the worker with mmap) or
        picklable callables returning an array; shard i's items come after those of shards < i.
    mode, store_codes: overrides of the layers' settings for every shard (e.g. "light", False).
    num_cpus_per_shard: CPUs Ray reserves per actor (None: Ray's default, which lets more actors
        than CPUs coexist); n_threads: torch and engine threads per shard (None: the defaults).
    resources: custom Ray resources per actor (e.g. {"node:10.0.0.2": 0.01} to pin a node).
    pool: a ShardPool whose warm actors hold the shards (no actor start-up); the three options
        above are then the pool's.
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
    actors = _take_actors(len(partitions), pool, "build_distributed", num_cpus_per_shard, n_threads, resources)
    layers_ref = ray.put(template)  # broadcast once; every actor receives the same object
    try:
        built = ray.get([a.build.remote(layers_ref, p) for a, p in zip(actors, partitions)])
    except BaseException:
        _give_back(actors, pool)
        raise
    return DistributedIndex(template, actors, [c for c, _ in built], [t for _, t in built], pool=pool)


def load_distributed(paths: Sequence[str], *, num_cpus_per_shard: Optional[float] = None,
                     resources: Optional[dict] = None, pool: Optional[ShardPool] = None) -> DistributedIndex:
    """Shard actors that each load one file written by save_shards() (paths readable by the workers);
    with `pool`, free actors of that ShardPool load them."""
    ray = _ray()
    paths = [os.fspath(p) for p in as_list(paths, "load_distributed", "shard files")]
    if not paths:
        raise ConfigError("load_distributed: expected at least one shard file, got none")
    if not ray.is_initialized():
        ray.init()
    head = LearnableLSHIndex.load(paths[0])  # the driver keeps the layers only
    template = head.empty_like()
    del head
    actors = _take_actors(len(paths), pool, "load_distributed", num_cpus_per_shard, None, resources)
    try:
        counts = ray.get([a.load.remote(p) for a, p in zip(actors, paths)])
        weights = ray.get([a.weight.remote() for a in actors])
    except BaseException:
        _give_back(actors, pool)
        raise
    if any(not np.array_equal(w, weights[0]) for w in weights[1:]):
        _give_back(actors, pool)
        raise ConfigError("load_distributed: the shard files do not share the same hash layers")
    return DistributedIndex(template, actors, counts, pool=pool)


# ---------------------------------------------------------------------- entry point
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llsh_index.distributed",
                                description="Build an LLSH index over Ray workers and score queries.")
    p.add_argument("--address", default="local", help="'auto' (existing cluster), 'local' (start Ray here) "
                                                       "or a ray:// / host:port address")
    p.add_argument("--train", required=True, help="comma-separated .npy files, one shard each (read by the workers)")
    p.add_argument("--test", required=True, help=".npy of (M, d) queries (read by the driver)")
    p.add_argument("--out", required=True, help="output .npy of (M,) scores")
    p.add_argument("--layers", help="a .llsh file whose hash layers (trained) are used; else untrained LSH")
    p.add_argument("--n-tables", type=int, default=8)
    p.add_argument("--n-bits", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=["mean", "light", "squared"],
                   help="scoring mode; light and squared keep bucket statistics only (store_codes=False)")
    p.add_argument("--cpus-per-shard", type=float, default=None)
    p.add_argument("--save-shards", help="folder where each worker saves its shard")
    a = p.parse_args(argv)
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init() if a.address == "local" else ray.init(address=a.address)
    train = [s for s in a.train.split(",") if s]
    if a.layers:
        layers = LearnableLSHIndex.load(a.layers).empty_like()
    else:
        dim = int(np.load(train[0], mmap_mode="r").shape[1])
        layers = LearnableLSHIndex(dim, n_tables=a.n_tables, n_bits=a.n_bits, seed=a.seed)
    # absolute paths: the workers may not share the driver's working directory
    stats_only = a.mode in ("light", "squared")
    dist = build_distributed(layers, [os.path.abspath(s) for s in train], mode=a.mode,
                             store_codes=False if stats_only else None, num_cpus_per_shard=a.cpus_per_shard)
    print(f"built {dist}", file=sys.stderr)
    if a.save_shards:
        for path in dist.save_shards(a.save_shards):
            print(f"saved {path}", file=sys.stderr)
    scores = dist.score(np.load(a.test))
    np.save(a.out, scores)
    print(f"wrote {a.out}: {scores.shape[0]} scores", file=sys.stderr)
    dist.shutdown()
    if started:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
