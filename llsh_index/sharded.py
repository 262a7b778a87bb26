"""Several devices on one host: shards of one index on the visible GPUs, scored at once, combined exactly.

    from llsh_index import LearnableLSHIndex, ShardedIndex
    layers = LearnableLSHIndex(d, n_tables=8, n_bits=32).fit(sample, video_ids=vids)
    sharded = ShardedIndex(layers)          # one shard per visible GPU (one CPU shard when there is none)
    sharded.add(train)                      # rows split into contiguous parts, one per shard
    scores = sharded.score(test)            # == layers.empty_like().add(train).score(test), to 1e-6

Placement.  Shard i lives on ``devices[i % len(devices)]``: by default every visible GPU
(``cuda:0``, ``cuda:1``, ...), or ``["cpu"]`` when none is visible; pass ``devices=["cuda:0",
"cuda:0"]`` (or ``n_shards=2``) for two shards on one GPU.  ``from_shards()`` takes indexes that
already hold items (e.g. loaded from shard files) and moves them to the devices in place.
``save_shards(folder)`` writes one file per shard there, then ``shards.json``, the list of those
files with their SHA-256; ``ShardedIndex.load(folder)`` reads them back in shard order, and refuses
a folder whose files are not those the list names (a save that was interrupted halfway: the new
files of some shards beside the old files of others).  ``load`` also takes a list of shard files.

Scoring.  The queries are hashed once, on the first shard's device (or on the device a CUDA query
tensor already lives on, when a shard lives there too), and only the codes travel: b*r float32 +
b uint64 keys per query to each device, not the d features.  One thread per device then runs that
device's shards (``partial_scores`` with the pre-hashed codes: a native lookup that releases the GIL,
on the device's current stream, asynchronous until its partial sums are copied to the host), all
devices at once, while the main thread hashes the next round of queries.  The partial sums
(per query and table: bucket size and float64 sum of distances, or the bucket's code sum for
"light") are added on the host in shard order, so the scores equal those of one index over all
shards' items (``combine_partial_scores``: a miss only where every shard misses).

``add()`` hashes each shard's rows on that shard's device, all devices at once.  A shard with no
items yet answers nothing (all its counts are 0).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait as futures_wait
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import probing
from ._validation import PATH_TYPES, _is_cupy, _is_torch, as_list, check_bool, check_features, check_int_range
from .errors import (ConfigError, CudaUnavailableError, IndexFileNotFoundError, IndexFormatError, NotFittedError,
                     WritePathError)
from .index import (LearnableLSHIndex, _check_indexes, _keys_and_sizes, _normalise_device, _removal_mask,
                    _require_codes, _to_numpy, bucket_sizes_of_keys, check_reduce, probed_scores, table_occupancy)
from .io import _is_link_loop, atomic_write, file_sha256

__all__ = ["ShardedIndex"]

_SHARD_NAME = re.compile(r"shard_([0-9]{5}|[1-9][0-9]{5,})\.llsh")  # save_shards(): shard_{i:05d}.llsh
# written last by save_shards: which files make up the index.  Each shard file is written atomically,
# the set is not; without the list, a save interrupted after shard 0 loaded as new shard 0 + old shard 1
MANIFEST_NAME, _MANIFEST_FORMAT, _MANIFEST_VERSION = "shards.json", "llsh-shards", 1
_MANIFEST_MAX_BYTES = 64 << 20


# ---------------------------------------------------------------------- device helpers
# The few places that touch a real device; tests/test_sharded.py stands them in for fake devices
# (torch CPU tensors behind the CUDA engine's API) to test the placement logic without a GPU.
def _visible_gpus() -> int:
    """Number of CUDA devices this process can use with the CUDA engine (0 without one)."""
    from . import cuda_available

    return torch.cuda.device_count() if cuda_available() else 0


def _place(index: LearnableLSHIndex, device: str) -> LearnableLSHIndex:
    """Moves an index (hash layers and tables) to `device`."""
    return index.to(device)


def _send(x, device: str):
    """Copies a host or device array to `device` (a torch tensor there; unchanged when already there)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if device == "cpu":
        return x.cpu()
    if x.dtype == torch.uint64:  # copy the bits as int64: every torch copies int64 across devices
        return x.view(torch.int64).to(device, non_blocking=True).view(torch.uint64)
    return x.to(device, non_blocking=True)


def _device_scope(device: str):
    """Makes `device` the thread's current CUDA device (a no-op for the CPU)."""
    return torch.cuda.device(device) if device.startswith("cuda") else contextlib.nullcontext()


def _resolve_devices(devices) -> List[str]:
    n_gpus = _visible_gpus()
    if devices is None:
        return [f"cuda:{i}" for i in range(n_gpus)] or ["cpu"]
    if isinstance(devices, (str, torch.device)):
        devices = [devices]
    if not isinstance(devices, Iterable):
        raise ConfigError(f"devices: expected a device or a list of devices ('cpu', 'cuda:N'), got "
                          f"{type(devices).__name__} {devices!r}")
    out = []
    for d in devices:
        d = _normalise_device(d)
        if d == "cuda":
            d = f"cuda:{torch.cuda.current_device()}" if n_gpus else "cuda:0"
        if d.startswith("cuda") and int(d[5:]) >= n_gpus:
            raise CudaUnavailableError(f"devices: {d} was asked for, but {n_gpus} CUDA device(s) are visible to "
                                       "the CUDA engine")
        out.append(d)
    if not out:
        raise ConfigError("devices: expected at least one device ('cpu' or 'cuda:N'), got an empty list")
    return out


def _numbered_shards(folder: Path) -> List[tuple]:
    """(number, path) of the shard_NNNNN.llsh files save_shards() writes in `folder`, by number."""
    found = [(int(m.group(1)), folder / name) for name in os.listdir(folder)
             for m in [_SHARD_NAME.fullmatch(name)] if m]
    return sorted(found)


def _shard_files(folder: Path) -> List[Path]:
    """The shard files of the sharded index save_shards() wrote in `folder`, in shard order: those
    its shards.json lists (checked against their SHA-256), or, in a folder without one (written
    before the list existed), every shard_NNNNN.llsh there."""
    if (folder / MANIFEST_NAME).exists():
        return _manifest_files(folder)
    found = _numbered_shards(folder)
    if not found:
        raise IndexFileNotFoundError(f"load: no shard files in the folder {folder} (expected shard_00000.llsh, ... "
                                     f"as ShardedIndex.save_shards writes)", str(folder))
    missing = sorted(set(range(found[-1][0] + 1)) - {n for n, _ in found})
    if missing:
        raise IndexFormatError(f"load: the shard files in {folder} are not complete: shard_{missing[0]:05d}.llsh "
                               f"is missing ({len(missing)} of {found[-1][0] + 1} shards missing)")
    return [path for _, path in found]


def write_manifest(folder: Path, digests: Sequence[str]) -> None:
    """folder/shards.json naming shard_00000.llsh, ... with their SHA-256 (atomically: the last step of
    a save, so a save that stops before it leaves the previous list, which its new files then fail)."""
    body = {"format": _MANIFEST_FORMAT, "version": _MANIFEST_VERSION,
            "shards": [{"file": f"shard_{i:05d}.llsh", "sha256": d} for i, d in enumerate(digests)]}
    with atomic_write(str(folder / MANIFEST_NAME)) as f:
        f.write(json.dumps(body, indent=1).encode())


def _manifest_files(folder: Path) -> List[Path]:
    manifest = folder / MANIFEST_NAME
    bad = f"load: {manifest} is damaged or not a shard list"
    try:
        if not manifest.is_file() or manifest.stat().st_size > _MANIFEST_MAX_BYTES:
            raise IndexFormatError(f"{bad} (expected a JSON file of at most {_MANIFEST_MAX_BYTES >> 20} MiB)")
        body = json.loads(manifest.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, IndexFormatError):
            raise
        raise IndexFormatError(f"{bad} ({exc})") from None
    if not isinstance(body, dict) or body.get("format") != _MANIFEST_FORMAT:
        raise IndexFormatError(f"{bad} (expected format {_MANIFEST_FORMAT!r})")
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise IndexFormatError(f"{bad} (expected a version number, got {version!r})")
    if version > _MANIFEST_VERSION:
        raise IndexFormatError(f"load: {manifest} is of version {version}, newer than this llsh_index reads "
                               f"({_MANIFEST_VERSION}); upgrade llsh_index")
    entries = body.get("shards")
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and e.get("file") == f"shard_{i:05d}.llsh" and isinstance(e.get("sha256"), str)
            for i, e in enumerate(entries)):
        raise IndexFormatError(f"{bad} (expected 'shards': shard_00000.llsh, ... in order, each with its sha256)")
    paths = []
    for e in entries:
        path = folder / e["file"]
        if not path.is_file():
            raise IndexFormatError(f"load: {path} is missing: {MANIFEST_NAME} lists {len(entries)} shard files")
        if file_sha256(path) != e["sha256"]:
            raise IndexFormatError(f"load: {path} is not the file {MANIFEST_NAME} lists (its SHA-256 differs): the "
                                   f"folder mixes two saves (a save_shards that did not finish?) or the file was "
                                   f"changed; save the index again")
        paths.append(path)
    return paths


def _check_same_layers(first: LearnableLSHIndex, other, caller: str) -> None:
    """first._check_same_layers(other), its errors named after `caller` (it names merge)."""
    try:
        first._check_same_layers(other)
    except (ConfigError, NotFittedError) as exc:
        text = str(exc)
        raise type(exc)(f"{caller}: {text[len('merge: '):] if text.startswith('merge: ') else text}") from None


class _ReadWriteLock:
    """Scores share, add() is alone: a score sees every shard before an add() or every shard after
    it, never some shards with the new rows and some without.  A waiting add() goes before new
    scores (a stream of scores cannot starve it)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self):
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class _ShardScoring:
    """The scoring both transports share (ShardedIndex: threads on this host's devices; DistributedIndex:
    Ray actors): every shard gives partial sums for pre-hashed queries, one host-side index (the hash
    layers, no tables) adds them in shard order.  A subclass gives ``_combiner`` (that index) and
    ``_start_partials(codes, keys, mode)``, which starts every shard and returns a function that waits
    and gives their partial sums in shard order."""

    _combiner: LearnableLSHIndex

    def _start_partials(self, codes, keys, mode: str):  # pragma: no cover - each transport has its own
        raise NotImplementedError

    @staticmethod
    def _check_run(n_probes, miss_probes, reduce):
        """(n_probes, miss_probes, plain); plain: one pipelined round of partial sums per batch."""
        n_probes, miss_probes = probing.check_probes(n_probes, miss_probes)
        check_reduce(reduce)
        return n_probes, miss_probes, n_probes == 1 and not miss_probes

    def _combine(self, parts, codes, mode, return_distances, reduce="min", miss_value=None):
        return self._combiner.combine_partial_scores(parts, mode, return_distances, reduce=reduce,
                                                     miss_value=miss_value,
                                                     query_codes=_to_numpy(codes) if mode == "light" else None)

    def _distances(self, codes, keys, mode):
        """(M, b) distances of one key set; +inf where no shard has the bucket."""
        return self._combine(self._start_partials(codes, keys, mode)(), codes, mode, True, miss_value=math.inf)

    def _probed(self, codes, keys, mode, return_distances, n_probes, miss_probes=0, reduce="min"):
        """Multi-probe, probing on a miss and the mean over tables (llsh_index.probing, index.reduce_tables):
        one round of partial sums per probe rank, then the minimum over the probed buckets that exist."""
        return probed_scores(codes, keys, n_probes, miss_probes, reduce,
                             lambda c, k, _rows: self._distances(c, k, mode), self._combiner.default_miss_value(mode),
                             return_distances)

    def _pipelined(self, rounds, hash_round, mode, return_distances, n_probes, miss_probes, reduce, plain):
        """Scores of the query rounds in order; round k + 1 is hashed while the shards work on round k
        (plain, from _check_run: no probes; else one round of partial sums per probe rank)."""
        out = []
        hashed = hash_round(rounds[0])
        for k in range(len(rounds)):
            codes, keys = hashed
            wait = self._start_partials(codes, keys, mode) if plain else None
            if k + 1 < len(rounds):
                hashed = hash_round(rounds[k + 1])
            out.append(self._combine(wait(), codes, mode, return_distances, reduce) if wait is not None
                       else self._probed(codes, keys, mode, return_distances, n_probes, miss_probes, reduce))
        return out[0] if len(out) == 1 else np.concatenate(out)


def check_shards_folder(folder, what: str = "save_shards") -> Path:
    """`folder` as a Path, or WritePathError if save_shards could not write there: not a path, an
    existing non-folder, a part of the path that is a file, a folder it may not write in.  Nothing
    is created (the distributed command line calls it before its build, so a bad folder fails at once)."""
    if not isinstance(folder, PATH_TYPES):
        raise WritePathError(f"{what}: expected a folder path, got {type(folder).__name__} {folder!r}")
    if "\0" in os.fsdecode(folder):  # Path.mkdir would raise an untyped ValueError
        raise WritePathError(f"{what}: expected a folder path, got {os.fsdecode(folder)!r}, which contains a NUL byte")
    if _is_link_loop(os.fsdecode(folder)):  # Path.exists() says False, and mkdir then "File exists"
        raise WritePathError(f"{what}: expected a folder for the shard files, but {os.fsdecode(folder)} is a "
                             f"symbolic link loop (the links never reach a folder)")
    folder = Path(os.fsdecode(folder))
    if folder.exists() and not folder.is_dir():
        raise WritePathError(f"{what}: expected a folder for the shard files, but {folder} exists and is not a folder")
    # mkdir(parents=True) starts from the nearest existing ancestor: that one must be a folder it may write in
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise WritePathError(f"{what}: cannot create the folder {folder}: a part of that path is a file ({existing})")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WritePathError(f"{what}: cannot write in {existing} (permission denied)")
    return folder


def make_shards_folder(folder, what: str = "save_shards") -> Path:
    """check_shards_folder, then the folder made (WritePathError if that still fails)."""
    folder = check_shards_folder(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # changed since the check (a file put there meanwhile), a read-only file system
        raise WritePathError(f"{what}: cannot create the folder {folder}: {exc.strerror or exc}") from exc
    return folder


class ShardedIndex(_ShardScoring):
    """Shards of one index on the devices of this host; see the module docstring.

    Parameters
    ----------
    layers : a LearnableLSHIndex with hash layers (trained or not); its tables, if any, are not used.
    devices : None (every visible GPU, or "cpu" without one), or a list of "cpu" / "cuda:N".
    n_shards : number of shards (default: one per device); shard i goes to devices[i % len(devices)].
    mode, store_codes : overrides of the layers' settings for every shard (e.g. "light", False).
    """

    def __init__(self, layers: LearnableLSHIndex, devices: Optional[Sequence[str]] = None,
                 n_shards: Optional[int] = None, *, mode: Optional[str] = None, store_codes: Optional[bool] = None):
        if not isinstance(layers, LearnableLSHIndex):
            raise ConfigError(f"layers: expected a LearnableLSHIndex, got {type(layers).__name__}")
        if layers.encoder is None:
            raise NotFittedError("layers: the index has no hash layers yet (no fit(), or dim unknown)")
        devs = _resolve_devices(devices)
        if n_shards is None:
            n_shards = len(devs)
        if isinstance(n_shards, bool) or not isinstance(n_shards, (int, np.integer)) or n_shards < 1:
            raise ConfigError(f"n_shards: expected an integer >= 1, got {n_shards!r}")
        overrides = {k: v for k, v in (("mode", mode), ("store_codes", store_codes)) if v is not None}
        host = layers.empty_like(**overrides).to("cpu")
        self._init(host, [host.empty_like() for _ in range(int(n_shards))], devs)

    @classmethod
    def from_shards(cls, shards: Sequence[LearnableLSHIndex], devices: Optional[Sequence[str]] = None
                    ) -> "ShardedIndex":
        """A sharded index over existing indexes (same hash layers), moved in place to the devices."""
        shards = list(shards)
        if not shards:
            raise ConfigError("from_shards: expected at least one index, got none")
        _check_indexes(shards, "from_shards")
        for s in shards[1:]:
            _check_same_layers(shards[0], s, "from_shards")
            # the first shard's settings score for all: shards that differ would make the scores
            # depend on the order of the list
            if (s.mode, s.miss_value) != (shards[0].mode, shards[0].miss_value):
                raise ConfigError(f"from_shards: every shard must have the same mode and miss_value, got "
                                  f"{[(x.mode, x.miss_value) for x in shards]}")
        out = cls.__new__(cls)
        out._init(shards[0].empty_like().to("cpu"), shards, _resolve_devices(devices))
        return out

    @classmethod
    def load(cls, paths, devices: Optional[Sequence[str]] = None, *, mmap: bool = False) -> "ShardedIndex":
        """The sharded index save_shards() wrote: its folder (the shard_NNNNN.llsh files there, in
        their order), or a list of shard files (or any index files sharing their hash layers); one
        file path alone is one shard.

        mmap=True: each shard is loaded with LearnableLSHIndex.load(mmap=True), its codes left mapped
        from its file; the shards then stay on the CPU (devices None means ["cpu"] here, and any other
        device is refused: moving a shard there would copy its codes anyway)."""
        if check_bool(mmap, "mmap"):  # checked before any file is read or device looked for
            devices = ["cpu"] if devices is None else [devices] if isinstance(devices, (str, torch.device)) else devices
            devices = list(devices) if isinstance(devices, Iterable) else devices  # else _resolve_devices' error
            others = [str(d) for d in devices if _normalise_device(d) != "cpu"] if isinstance(devices, list) else []
            if others:
                raise ConfigError(f"load: mmap=True keeps the shards' codes mapped in this host's memory; expected "
                                  f"devices ['cpu'] (or None), got {others[0]!r} among them (load with mmap=False to "
                                  f"place shards on a GPU)")
        if isinstance(paths, PATH_TYPES) and os.path.isdir(os.fsdecode(paths)):
            paths = _shard_files(Path(os.fsdecode(paths)))
        return cls.from_shards([LearnableLSHIndex.load(os.fspath(p), mmap=mmap)
                                for p in as_list(paths, "load", "shard file paths")], devices)

    def _init(self, host: LearnableLSHIndex, shards: List[LearnableLSHIndex], devs: List[str]) -> None:
        self._host = host  # hash layers and settings, on the CPU, no tables: combines the partial sums
        self.shards = shards
        self.devices = [devs[i % len(devs)] for i in range(len(shards))]
        for s, d in zip(self.shards, self.devices):
            _place(s, d)
        self._hashers: Dict[str, LearnableLSHIndex] = {}
        self._threads: Optional[Dict[str, ThreadPoolExecutor]] = None
        self._lock = _ReadWriteLock()
        # device -> its shards, in shard order; the reduction is always in shard order
        self._groups: Dict[str, List[int]] = {}
        for i, d in enumerate(self.devices):
            self._groups.setdefault(d, []).append(i)

    # ------------------------------------------------------------------ info
    @property
    def n_shards(self) -> int:
        return len(self.shards)

    @property
    def ntotal(self) -> int:
        return sum(s.ntotal for s in self.shards)

    @property
    def shard_sizes(self) -> List[int]:
        return [s.ntotal for s in self.shards]

    @property
    def mode(self) -> str:
        return self._host.mode

    def memory_bytes(self) -> List[int]:
        """Bytes of the tables of each shard, on its device."""
        return [s.memory_bytes() for s in self.shards]

    def _filled(self, caller: str) -> List[LearnableLSHIndex]:
        filled = [s for s in self.shards if s.ntotal]
        if not filled:
            raise NotFittedError(f"{caller}: the index is empty; call add(features) first")
        return filled

    def stats(self) -> dict:
        """LearnableLSHIndex.stats() of all the shards together: what one index holding every item
        would report (a key held by several shards is one bucket)."""
        with self._lock.read():  # every shard as of one moment
            filled = self._filled("stats")
            per_shard = [_keys_and_sizes(s._tables) for s in filled]
            return table_occupancy(list(zip(*per_shard)), sum(s.ntotal for s in filled))

    def query_bucket_sizes(self, queries) -> np.ndarray:
        """LearnableLSHIndex.query_bucket_sizes() over all the shards: (M, n_tables) sizes of each
        query's bucket summed over the shards, 0 where no shard has it.  Hashed once, on the CPU."""
        keys = _to_numpy(self._host._encode_all(_to_numpy(self._host_rows(queries, "queries")),
                                                "query_bucket_sizes", "queries")[1])
        with self._lock.read():
            filled = self._filled("query_bucket_sizes")
            return sum(bucket_sizes_of_keys(_keys_and_sizes(s._tables), keys) for s in filled)

    # ------------------------------------------------------------------ threads
    def _start(self, fn):
        """Starts fn(device, shard indices) for every device, each on that device's own thread;
        returns a function that waits and gives the results in device order.  With one device it
        runs here, at once."""
        groups = list(self._groups.items())
        if len(groups) == 1:  # one device: no thread to hop to
            result = [fn(*groups[0])]
            return lambda: result
        if self._threads is None:  # one single-worker executor per device: a device's work never overlaps itself
            self._threads = {d: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llsh-{d}") for d, _ in groups}
        futures = [self._threads[d].submit(fn, d, idx) for d, idx in groups]

        def wait():
            futures_wait(futures)  # every device done first: an error leaves no work running behind it
            return [f.result() for f in futures]

        return wait

    def __getstate__(self):  # pickling (multiprocessing, copies): threads and locks are made anew
        state = self.__dict__.copy()
        state["_threads"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = _ReadWriteLock()

    def close(self) -> None:
        """Stops the per-device threads (the shards stay usable; threads restart when needed)."""
        threads, self._threads = self._threads, None
        for t in (threads or {}).values():
            t.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ building
    def _host_rows(self, x, name: str):
        """Validated features as a torch tensor: a view of host data, or the CUDA tensor as given."""
        if (_is_torch(x) and x.is_cuda) or _is_cupy(x):
            from ._validation import array_device

            dev = array_device(x)
            return check_features(x, name, self._host.dim, dev)
        return check_features(x, name, self._host.dim, "cpu")

    def add(self, features, *, shard: Optional[int] = None) -> "ShardedIndex":
        """Splits the rows into n_shards contiguous parts (sizes differ by at most 1) and adds part i
        to shard i, every device at once; each part is hashed on its shard's device.

        shard=i: every row to shard i (a small shard of recent rows beside a large one: an add
        rebuilds the tables of its shard only), under the same lock, so a score() never sees it
        halfway (adding to ``shards[i]`` directly would not take it)."""
        t = self._host_rows(features, "features")
        if shard is not None:
            i = check_int_range(shard, "shard", 0, self.n_shards - 1)
            with self._lock.write(), _device_scope(self.devices[i]):
                self.shards[i].add(_send(t, self.devices[i]))
            return self
        bounds = np.linspace(0, t.shape[0], self.n_shards + 1).round().astype(np.int64)

        def run(dev, idx):
            with _device_scope(dev):
                for i in idx:
                    if bounds[i + 1] > bounds[i]:
                        self.shards[i].add(_send(t[bounds[i]:bounds[i + 1]], dev), _first_row=int(bounds[i]))

        # all or nothing: a bad row in one part must not leave the other parts added (a retry would
        # add them twice)
        with self._all_or_nothing():
            self._start(run)()
        return self

    @contextlib.contextmanager
    def _all_or_nothing(self):
        """The write lock, and every shard's tables as before if the body raises: each shard's add()
        or remove_ids() swaps in new tables, so the old ones are the undo.  The lock keeps scores and
        other writes out meanwhile (the undo must not drop their rows)."""
        with self._lock.write():
            before = [s._tables for s in self.shards]
            try:
                yield
            except BaseException:
                for s, tables in zip(self.shards, before):
                    s._tables = tables
                raise

    # ------------------------------------------------------------------ scoring
    def _hasher(self, device: str) -> LearnableLSHIndex:
        if device not in self._hashers:
            self._hashers[device] = _place(self._host.empty_like(), device)
        return self._hashers[device]

    def _hash(self, q: torch.Tensor):
        """(codes, keys) of a batch of validated queries, hashed once on one shard device."""
        src = "cpu" if q.device.type == "cpu" else str(q.device)
        dev = src if src in self._groups else self.devices[0]
        return self._hasher(dev).hash_queries(_send(q, dev))

    @property
    def _combiner(self) -> LearnableLSHIndex:
        return self._host

    def _start_partials(self, codes, keys, mode: str):
        """Starts every shard on pre-hashed queries; the returned function waits and gives the partial
        sums in shard order (none for an empty shard)."""
        def run(dev, idx):
            with _device_scope(dev):
                qc, qk = _send(codes, dev), _send(keys, dev)  # one copy per device, shared by its shards
                return [(i, self.shards[i].partial_scores(mode=mode, query_codes=qc, query_keys=qk))
                        for i in idx if self.shards[i].ntotal]

        wait = self._start(run)

        def parts():
            by_shard = dict(p for group in wait() for p in group)
            return [by_shard[i] for i in sorted(by_shard)]

        return parts

    def _run(self, queries, mode, return_distances, query_batch, n_probes=1, miss_probes=0, reduce="min"):
        n_probes, miss_probes, plain = self._check_run(n_probes, miss_probes, reduce)
        if self.ntotal == 0:
            raise NotFittedError("score: the sharded index is empty; call add(features) first")
        mode = self._host.mode if mode is None else mode
        if mode == "mean" and not self._host.store_codes:
            raise ConfigError("mode: 'mean' needs the per-item codes, but these shards keep bucket statistics "
                              "only (store_codes=False); use 'light' or 'squared'")
        t = self._host_rows(queries, "queries")
        step = t.shape[0] if query_batch is None else check_int_range(query_batch, "query_batch", 1)
        rounds = [t[i:i + step] for i in range(0, t.shape[0], step)]
        with self._lock.read():
            return self._pipelined(rounds, self._hash, mode, return_distances, n_probes, miss_probes, reduce, plain)

    def table_distances(self, queries, mode: Optional[str] = None, *, query_batch: Optional[int] = 65_536,
                        n_probes: int = 1, miss_probes: int = 0) -> np.ndarray:
        """(M, n_tables) float32 distances, equal to one index over all shards' items."""
        return self._run(queries, mode, True, query_batch, n_probes, miss_probes)

    def score(self, queries, mode: Optional[str] = None, *, query_batch: Optional[int] = 65_536,
              n_probes: int = 1, miss_probes: int = 0, reduce: str = "min") -> np.ndarray:
        """(M,) float32 anomaly scores (min, or mean, over tables), equal to one index over all shards' items.

        queries: numpy, torch (CPU or CUDA) or cupy; hashed once per round of `query_batch` rows.
        n_probes, miss_probes, reduce: as LearnableLSHIndex.score (multi-probe, probing on a miss, the
        mean over tables; 1, 0 and "min" are the paper).
        """
        return self._run(queries, mode, False, query_batch, n_probes, miss_probes, reduce)

    def search(self, queries, k: int = 1):
        """LearnableLSHIndex.search over all the shards: (distances (M, k) float32, ids (M, k) int64),
        numpy, what one index of every shard's items gives, with gather()'s numbering (shard i's ids
        after the items of shards 0 .. i-1), ties to the smaller id.  Hashed once; each device
        searches its shards at once; the k nearest of every shard are merged on the host."""
        k = check_int_range(k, "k", 1)
        _require_codes(self._host, "search")
        codes, keys = self._hash(self._host_rows(queries, "queries"))

        def run(dev, idx):
            with _device_scope(dev):
                qc, qk = _send(codes, dev), _send(keys, dev)  # one copy per device, shared by its shards
                out = []
                for i in idx:
                    tables = self.shards[i]._tables
                    if tables is not None:
                        d, j = self.shards[i]._search_hashed(tables, qc, qk, k)
                        out.append((i, _to_numpy(d), _to_numpy(j)))
                return out

        with self._lock.read():  # every shard as of one moment, and their sizes with them
            self._filled("search")
            first = np.concatenate([[0], np.cumsum(self.shard_sizes)])
            found = sorted(r for group in self._start(run)() for r in group)
        dist = np.concatenate([d for _, d, _ in found], axis=1)
        ids = np.concatenate([np.where(j >= 0, j + first[i], -1) for i, _, j in found], axis=1)
        order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), dist))[:, :k]  # per row
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)

    def remove_ids(self, ids) -> int:
        """LearnableLSHIndex.remove_ids over all the shards, with gather()'s numbering (shard i's items
        after those of shards 0 .. i-1); every shard's items left are renumbered, so the numbering stays
        gather()'s.  All or nothing, under the lock add() takes.  Returns how many it removed."""
        with self._all_or_nothing():
            sizes = self.shard_sizes
            drop = _removal_mask(ids, sum(sizes))
            if not drop.any():
                return 0
            _require_codes(self._host, "remove_ids")
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            removed = 0
            for i, shard in enumerate(self.shards):
                part = drop[bounds[i]:bounds[i + 1]]
                if part.any():
                    with _device_scope(self.devices[i]):
                        removed += shard.remove_ids(part)
            return removed

    # ------------------------------------------------------------------ persistence
    def save_shards(self, folder) -> List[str]:
        """Saves shard i to folder/shard_00000.llsh, ...; returns the paths (ShardedIndex.load reads them, or the folder).

        Then shards.json, the list of these files with their SHA-256, which load() checks: a save
        stopped halfway (some shards new, some old) is refused at load, not read as one index.
        Shard files of an earlier, larger save in the same folder (shard_000NN.llsh beyond this
        index's count) are removed, so the folder holds this index and nothing else of the kind."""
        folder = make_shards_folder(folder)
        paths = []
        digests = []
        with self._lock.read():  # the files of one state, not halfway through an add()
            for i, s in enumerate(self.shards):
                paths.append(str(folder / f"shard_{i:05d}.llsh"))
                digests.append(hashlib.sha256())
                s._save(paths[-1], digests[-1])  # the digest of what this save wrote, even if another replaces it
        write_manifest(folder, [d.hexdigest() for d in digests])
        for number, stale in _numbered_shards(folder):
            if number >= len(self.shards):
                stale.unlink()
        return paths

    def gather(self) -> LearnableLSHIndex:
        """One CPU index holding every shard's items (merge_all in shard order), and the first feature
        space a shard records."""
        out = self._host.empty_like()
        # every shard as of one moment, not halfway through an add(): their tables taken under the lock
        # (an add swaps a shard's tables, never changes them), merged after it, so a waiting add and the
        # scores queued behind it are not held for the whole rebuild
        with self._lock.read():
            frozen = [copy.copy(s) for s in self.shards]
        out._merge_many(frozen)  # brings device shards' rows onto this CPU index
        if out.feature_space_ is None:
            out.feature_space_ = next((dict(s.feature_space_) for s in frozen if s.feature_space_), None)
        return out

    def __repr__(self) -> str:
        return (f"ShardedIndex(n_shards={self.n_shards}, devices={self.devices}, ntotal={self.ntotal}, "
                f"dim={self._host.dim}, n_tables={self._host.n_tables}, n_bits={self._host.n_bits}, "
                f"mode={self.mode!r})")
