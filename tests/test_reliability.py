"""Concurrency, memory bounds and determinism of LearnableLSHIndex.

Concurrency guarantees (index.py): score() takes one snapshot of the tables dict and add() builds a
new dict under a write lock and swaps it in with one reference assignment.  So concurrent scores
equal serial ones, a score running during add() returns the before- or the after-add result
(bitwise), and concurrent add() calls serialize: the result is the tables of the two adds in one
order or the other (item ids follow the order in which the lock was taken).

Memory: add() and score() hash the input in chunks of batch_size rows, so the memory they need
beyond the input and the result does not grow with the number of rows.  tracemalloc does not see
torch's CPU allocations (checked below), so the bounds are measured as the growth of the peak
resident set (VmHWM, reset through /proc/self/clear_refs) in a fresh subprocess.
"""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import llsh_index
from llsh_index import LearnableLSHIndex

# The folder holding the llsh_index this process imported (the checkout for an editable install,
# site-packages for an installed wheel): the child processes import that same package, not a
# checkout's or an unpacked sdist's llsh_index/, which has no built _C next to an installed wheel.
PKG_PARENT = Path(llsh_index.__file__).resolve().parents[1]
TABLE_KEYS = ("keys", "table_start", "offsets", "ids", "codes", "bucket_sum", "bucket_sqnorm")


def data(seed, n, d=32):
    rng = np.random.default_rng(seed)
    centres = 2 * rng.standard_normal((6, d))
    return (centres[rng.integers(0, 6, n)] + 0.5 * rng.standard_normal((n, d))).astype(np.float32)


def tables_of(index):
    return {k: (None if index._tables[k] is None else index._tables[k].copy()) for k in TABLE_KEYS}


def same_tables(a, b):
    return all((a[k] is None and b[k] is None) or (a[k] is not None and b[k] is not None and a[k].shape == b[k].shape
                                                    and np.array_equal(a[k], b[k])) for k in TABLE_KEYS)


def run_script(script, *args, env=None, timeout=300):
    env = dict(os.environ, **(env or {}))
    env["PYTHONPATH"] = os.pathsep.join([str(PKG_PARENT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout,
                         env=env, cwd=str(PKG_PARENT))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- concurrency
def test_concurrent_scores_equal_serial_scores():
    index = LearnableLSHIndex(n_tables=8, n_bits=16, batch_size=128).add(data(0, 4000))
    queries = [data(10 + i, 700) for i in range(4)]
    serial = {(i, m): index.score(q, m) for i, q in enumerate(queries) for m in ("mean", "light", "squared")}
    jobs = [(i, m) for i in range(4) for m in ("mean", "light", "squared")] * 3
    start = threading.Barrier(4)

    def work(k):
        start.wait()
        return [(job, index.score(queries[job[0]], job[1])) for job in jobs[k::4]]

    with ThreadPoolExecutor(4) as pool:
        results = [r for part in pool.map(work, range(4)) for r in part]
    assert len(results) == len(jobs)
    for job, got in results:
        np.testing.assert_array_equal(got, serial[job], err_msg=str(job))


def test_scores_during_adds_and_merges_are_the_before_or_after_result():
    """Two adds and a merge of a shard run while 3 threads score in a loop; every score equals,
    bitwise, the score of one of the 4 states the index passes through (never a mix), and a thread
    never goes back in time."""
    base, parts = data(1, 3000), [data(2 + i, 6000) for i in range(3)]
    queries = data(9, 600)
    kw = dict(n_tables=6, n_bits=12, batch_size=256)
    shard = LearnableLSHIndex(**kw).add(parts[1])  # same seed and dim: the same hash layers

    def change(index, i):
        return index.merge(shard) if i == 1 else index.add(parts[i])

    ref = LearnableLSHIndex(**kw).add(base)
    states = [ref.score(queries)]
    for i in range(3):
        states.append(change(ref, i).score(queries))
    assert all(not np.array_equal(states[i], states[i + 1]) for i in range(3))  # the states are distinguishable

    live = LearnableLSHIndex(**kw).add(base)
    adds_done = threading.Event()
    go = threading.Barrier(4)
    add_spans = []

    def adder():
        go.wait()
        for i in range(3):
            t0 = time.perf_counter()
            change(live, i)
            add_spans.append((t0, time.perf_counter()))
        adds_done.set()

    def scorer():
        seen = [(0.0, 0.0, _state(live.score(queries)))]  # before any add
        go.wait()
        while not adds_done.is_set():
            t0 = time.perf_counter()
            s = live.score(queries)
            seen.append((t0, time.perf_counter(), _state(s)))
        seen.append((0.0, 0.0, _state(live.score(queries))))  # after every add
        return seen

    def _state(s):
        for i, st in enumerate(states):
            if np.array_equal(s, st):
                return i
        return -1

    with ThreadPoolExecutor(4) as pool:
        fut = [pool.submit(scorer) for _ in range(3)]
        pool.submit(adder).result()
        seen = [f.result() for f in fut]
    for thread in seen:
        ids = [s for _, _, s in thread]
        assert -1 not in ids, "a score matched no state: a mix of before and after"
        assert ids == sorted(ids), f"a thread went back in time: {ids}"
        assert ids[0] == 0 and ids[-1] == 3
    overlapping = [s for thread in seen for (t0, t1, s) in thread[1:-1]
                   if any(t0 < a1 and t1 > a0 for a0, a1 in add_spans)]
    assert overlapping, "no score ran during an add: the test did not test anything"
    assert live.ntotal == 3000 + 18000 and same_tables(tables_of(live), tables_of(ref))


@pytest.mark.parametrize("store_codes", [True, False])
def test_concurrent_adds_serialize(store_codes):
    """Two threads add at once: the result is one of the two sequential orders, bit for bit."""
    base, a, b = data(3, 2000), data(4, 5000), data(5, 4000)
    kw = dict(n_tables=4, n_bits=14, batch_size=512, store_codes=store_codes, mode="mean" if store_codes else "light")
    ab = tables_of(LearnableLSHIndex(**kw).add(base).add(a).add(b))
    ba = tables_of(LearnableLSHIndex(**kw).add(base).add(b).add(a))
    if store_codes:
        assert not same_tables(ab, ba)  # ids differ with the order, so the test can tell them apart
    for _ in range(3):
        live = LearnableLSHIndex(**kw).add(base)
        go = threading.Barrier(2)

        def add(x):
            go.wait()
            live.add(x)

        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(add, a), pool.submit(add, b)]:
                f.result()
        got = tables_of(live)
        assert live.ntotal == 11000
        assert same_tables(got, ab) or same_tables(got, ba)
        ts, keys, off = got["table_start"], got["keys"], got["offsets"]
        for j in range(4):  # the sorted layout, whatever the order
            k = keys[ts[j]:ts[j + 1]]
            assert np.all(k[1:] > k[:-1]) and off[ts[j + 1]] - off[ts[j]] == 11000
        if store_codes:
            for j in range(4):
                assert np.array_equal(np.sort(got["ids"][j * 11000:(j + 1) * 11000]), np.arange(11000))


def test_add_during_fit_waits_for_the_trained_layers():
    """fit() holds the write lock: an add() started mid-training hashes with the final layers (it
    hashed with half-trained ones, and the saved tables no longer matched the layers)."""
    x = data(11, 600, d=16)
    vids = np.repeat(np.arange(6), 100)
    live = LearnableLSHIndex(16, n_tables=4, n_bits=8, seed=2)
    started = threading.Event()
    fit = threading.Thread(target=lambda: (started.set(), live.fit(x, video_ids=vids, iterations=300, batch_size=32,
                                                                    queue_size=64, progress=False)))
    fit.start()
    started.wait()
    time.sleep(0.2)
    live.add(x)  # waits for fit()
    fit.join()
    assert live.is_trained and live.ntotal == 600
    np.testing.assert_array_equal(live.score(x[:100]), live.empty_like().add(x).score(x[:100]))


def test_a_second_fit_continues_and_its_log_covers_both():
    x = data(12, 400, d=16)
    vids = np.repeat(np.arange(4), 100)
    kw = dict(video_ids=vids, batch_size=32, queue_size=64, progress=False)
    once = LearnableLSHIndex(16, n_tables=2, n_bits=8, seed=5).fit(x, iterations=4, **kw)
    twice = LearnableLSHIndex(16, n_tables=2, n_bits=8, seed=5).fit(x, iterations=4, **kw)
    steps = twice.training_log_.steps
    twice.fit(x, iterations=4, **kw)
    assert twice.training_log_.steps == 2 * steps == 2 * once.training_log_.steps
    assert twice.training_log_.losses[:len(once.training_log_.losses)] == once.training_log_.losses
    assert not torch.equal(twice.encoder.weight, once.encoder.weight)  # trained further, not from the seed


def test_a_second_fit_draws_new_pairs_reproducibly(monkeypatch):
    """The second fit() does not replay the first one's pairs (it re-seeded from the same seed and
    drew them again); two indexes fitted twice the same way stay identical."""
    from llsh_index import training

    x = data(12, 400, d=16)
    vids = np.repeat(np.arange(4), 100)
    kw = dict(video_ids=vids, batch_size=32, queue_size=64, progress=False, iterations=4)
    drawn = []
    real = training.PairSampler.epoch
    monkeypatch.setattr(training.PairSampler, "epoch", lambda self: drawn.append(real(self)) or drawn[-1])
    a = LearnableLSHIndex(16, n_tables=2, n_bits=8, seed=5).fit(x, **kw).fit(x, **kw)
    b = LearnableLSHIndex(16, n_tables=2, n_bits=8, seed=5).fit(x, **kw).fit(x, **kw)
    assert len(drawn) == 4 and drawn[0].shape == drawn[1].shape
    assert not np.array_equal(drawn[0], drawn[1])
    np.testing.assert_array_equal(drawn[0], drawn[2])
    np.testing.assert_array_equal(drawn[1], drawn[3])
    assert torch.equal(a.encoder.weight, b.encoder.weight)
    assert a.training_log_.losses == b.training_log_.losses


def test_sharded_scores_during_adds_see_before_or_after(tmp_path):
    """A ShardedIndex score never sees some shards with an add()'s rows and some without, and a
    failing add() running beside a good one neither keeps its own rows nor drops the other's."""
    from llsh_index import InvalidInputError, ShardedIndex

    x, q = data(13, 9000, d=16), data(14, 60, d=16)
    layers = LearnableLSHIndex(16, n_tables=4, n_bits=10, seed=3)
    sh = ShardedIndex(layers, devices="cpu", n_shards=3).add(x[:6000])
    before = sh.score(q)
    after = layers.empty_like().add(x).score(q)
    seen, stop = [], threading.Event()

    def scorer():
        while not stop.is_set():
            seen.append(sh.score(q))

    threads = [threading.Thread(target=scorer) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    sh.add(x[6000:])
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert seen and all(np.array_equal(s, before) or np.array_equal(s, after) for s in seen)
    bad = x[:3000].copy()
    bad[-1, 0] = np.nan
    for _ in range(3):
        sh2 = ShardedIndex(layers, devices="cpu", n_shards=2).add(x[:100])
        errors = []

        def failing():
            try:
                sh2.add(bad)
            except InvalidInputError as exc:
                errors.append(exc)

        t = threading.Thread(target=failing)
        t.start()
        sh2.add(x[100:300])
        t.join()
        assert len(errors) == 1 and sh2.ntotal == 300


def test_save_during_adds_writes_one_consistent_state(tmp_path):
    base, parts = data(6, 2000), [data(7 + i, 4000) for i in range(3)]
    kw = dict(n_tables=4, n_bits=12, batch_size=512)
    live = LearnableLSHIndex(**kw).add(base)
    queries = data(8, 300)
    ref = LearnableLSHIndex(**kw).add(base)
    states = [ref.score(queries)] + [ref.add(p).score(queries) for p in parts]
    done = threading.Event()

    def adder():
        for p in parts:
            live.add(p)
        done.set()

    saved = []
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(adder)
        i = 0
        while not done.is_set() or i == 0:
            path = tmp_path / f"s{i}.llsh"
            live.save(str(path))
            saved.append(path)
            i += 1
        fut.result()
    for path in saved:
        loaded = LearnableLSHIndex.load(str(path))
        s = loaded.score(queries)
        assert any(np.array_equal(s, st) for st in states), path.name
        assert loaded.ntotal in (2000, 6000, 10000, 14000)


# ---------------------------------------------------------------------- memory
def test_tracemalloc_does_not_see_torch_allocations():
    """Why the memory bounds below are measured as RSS in a subprocess."""
    tracemalloc.start()
    try:
        t = torch.ones(4 << 20)  # 16 MiB
        torch_peak = tracemalloc.get_traced_memory()[1]
        a = np.ones(4 << 20, np.float32)  # 16 MiB
        numpy_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del t, a
    assert torch_peak < 1 << 20 and numpy_peak >= 16 << 20


MEMORY_SCRIPT = textwrap.dedent(r"""
    import ctypes, json, sys
    import numpy as np
    from llsh_index import LearnableLSHIndex

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    libc = ctypes.CDLL(None)
    def growth(fn, x, warm_rows):
        # warm-up on one chunk only (thread pools, lazy initialisation, one chunk's working set):
        # warming up on all of x would leave its large blocks cached by malloc and hide a full copy
        fn(x[:warm_rows])
        libc.malloc_trim(0)
        reset_peak()
        rss = status("VmRSS")
        out = fn(x)
        return status("VmHWM") - rss, out

    CHUNK, DIM = 1024, 256                          # one chunk of input = 1 MiB of float32
    rng = np.random.default_rng(0)
    index = LearnableLSHIndex(n_tables=8, n_bits=32, batch_size=CHUNK).add(
        rng.standard_normal((2000, DIM)).astype(np.float32))
    # 60 chunks = 60 MiB, allocated up front: a copy of the input would stand far above the few
    # chunks' working set (8-11 MiB, which moves by a MiB with malloc and MKL's buffers)
    q = rng.standard_normal((60 * CHUNK, DIM)).astype(np.float32)
    res = {"chunk_bytes": CHUNK * DIM * 4, "query_bytes": q.nbytes}
    res["score_f32"], s = growth(index.score, q, CHUNK)
    res["result_bytes"] = s.nbytes + 60 * CHUNK * 8 * 4            # scores + the (M, b) distances
    q64 = q.astype(np.float64)
    res["score_f64"], _ = growth(index.score, q64, CHUNK)
    del q64
    qs = np.repeat(q, 2, axis=1)[:, ::2]                            # non-contiguous view of q
    res["score_strided"], _ = growth(index.score, qs, CHUNK)
    del qs
    # add(): 10 chunks of 4 MiB each (1024 dims); the tables of 2 x 8-bit codes are ~0.8 MB
    x = rng.standard_normal((10 * 1024, 1024)).astype(np.float32)
    def add(x):
        return LearnableLSHIndex(n_tables=2, n_bits=8, batch_size=1024).add(x).memory_bytes()
    res["add_f32"], res["table_bytes"] = growth(add, x, 1024)
    res["add_input_bytes"] = x.nbytes
    del x
    # the default chunking (a 64 MiB budget), float64 queries of d 128 at b 8, r 32, with and without
    # probes: the chunk's float32 copy, GEMM output and probe masks are all inside the budget
    index = LearnableLSHIndex(n_tables=8, n_bits=32).add(rng.standard_normal((20000, 128)).astype(np.float32))
    q64 = rng.standard_normal((150000, 128))
    for probes in (1, 8):
        res[f"default_p{probes}"], s = growth(lambda q: index.score(q, n_probes=probes), q64, 40000)
    res["default_result_bytes"] = s.nbytes + len(q64) * 8 * 4
    print(json.dumps(res))
""")

# One fresh process serves both the memory measurements (first, on a clean heap) and the
# cross-process determinism check (after), to pay for one torch import instead of two.
CHILD_SCRIPT = MEMORY_SCRIPT.replace("print(json.dumps(res))", "")


def _child_script():
    return CHILD_SCRIPT + DETERMINISM_SCRIPT.replace('if __name__ == "__main__":\n    print(json.dumps(run(int(sys.argv[1]))))',
                                                     "") + "\nprint(json.dumps({'memory': res, 'determinism': run(11)}))\n"


@pytest.fixture(scope="module")
def child():
    # same threads as this process; a fixed mmap threshold, because glibc's dynamic one lets malloc
    # keep freed chunk buffers on its heap from run to run, which moved the measured peak 8-22 MiB
    # (5.2-6.3 MiB with it fixed): the tests measure the index's working set, not malloc's caching
    env = {"OMP_NUM_THREADS": str(torch.get_num_threads()), "MALLOC_MMAP_THRESHOLD_": "65536"}
    if not os.access("/proc/self/clear_refs", os.W_OK):  # no peak-RSS reset: determinism only
        return {"memory": None, "determinism": run_script(DETERMINISM_SCRIPT, "11", env=env)}
    return run_script(_child_script(), env=env)


@pytest.fixture(scope="module")
def memory(child):
    if child["memory"] is None:
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    return child["memory"]


MiB = 1 << 20


def test_scoring_60_chunks_stays_within_a_few_chunks(memory):
    """Scoring 60 chunks of float32 (60 MiB of queries) grows the peak RSS by at most 12 MiB beyond
    the result: the working set of a few chunks (measured 5.2-5.3 MiB), not a copy of the input
    (which alone is 60 MiB)."""
    bound = 12 * MiB + memory["result_bytes"]
    assert memory["query_bytes"] == 60 * memory["chunk_bytes"]
    assert memory["score_f32"] <= bound, memory


def test_add_does_not_copy_its_input(memory):
    """add() of 40 MiB of features grows the peak RSS by at most 12 MiB: 3 chunks' worth plus the
    tables (~1 MB here), so the input is hashed chunk by chunk, never copied or normalised whole."""
    assert memory["add_input_bytes"] == 40 * MiB
    assert memory["add_f32"] <= 12 * MiB + 4 * memory["table_bytes"], memory


@pytest.mark.parametrize("kind", ["score_f64", "score_strided"])
def test_scoring_other_layouts_stays_within_a_few_chunks(memory, kind):
    """float64 and strided queries are converted chunk by chunk (one more chunk-sized copy, measured
    6.1-6.3 MiB), never copied whole (a float32 copy alone would be 60 MiB)."""
    assert memory[kind] <= 14 * MiB + memory["result_bytes"], memory


@pytest.mark.parametrize("probes", [1, 8])
def test_default_chunks_stay_within_their_budget(memory, probes):
    """With the default chunks (a 64 MiB budget), float64 queries of d 128 at b 8, r 32 grew the peak
    by 201 MiB, and by 401 MiB with 8 probes (the budget counted only the float32 copy, not the GEMM
    output nor the probe masks; the probe ranking worked in blocks of 4M candidates): 55 / 88 MiB now."""
    assert memory[f"default_p{probes}"] <= 128 * MiB + memory["default_result_bytes"], memory

# ---------------------------------------------------------------------- determinism
DETERMINISM_SCRIPT = textwrap.dedent(r"""
    import hashlib, json, sys, tempfile, os
    import numpy as np
    from llsh_index import LearnableLSHIndex

    def digest(*arrays):
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def run(seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((600, 24)).astype(np.float32)
        q = rng.standard_normal((300, 24)).astype(np.float32)
        index = LearnableLSHIndex(n_tables=4, n_bits=16, seed=seed, batch_size=128)
        index.fit(x, video_ids=np.repeat(np.arange(12), 50), iterations=3, batch_size=32, queue_size=64,
                  progress=False)
        index.add(x)
        with tempfile.TemporaryDirectory() as d:
            index.save(os.path.join(d, "i.llsh"))
            file_hash = hashlib.sha256(open(os.path.join(d, "i.llsh"), "rb").read()).hexdigest()
        scores = digest(*[index.score(q, m) for m in ("mean", "light", "squared")])  # light: statistics now exist
        t = index._tables
        assert t["bucket_sum"] is not None
        return {"weight": digest(index.encoder.weight.detach().numpy()), "losses": index.training_log_.losses,
                "codes": digest(index.encode(q)), "keys": digest(index.hash_keys(q)),
                "tables": digest(*[t[k] for k in ("keys", "table_start", "offsets", "ids", "codes",
                                                     "bucket_sum", "bucket_sqnorm")]),
                "scores": scores, "file": file_hash}

    if __name__ == "__main__":
        print(json.dumps(run(int(sys.argv[1]))))
""")


def _in_process_run(seed):
    ns = {"__name__": "determinism"}
    exec(DETERMINISM_SCRIPT, ns)
    return ns["run"](seed)


def test_same_seed_is_bit_identical_within_and_across_processes(child):
    here = _in_process_run(11)
    assert _in_process_run(11) == here  # twice in this process
    assert child["determinism"] == here  # a fresh process: same weights, losses, codes, tables, scores, file bytes
    other = _in_process_run(12)
    assert other["weight"] != here["weight"] and other["file"] != here["file"]  # the seed matters
