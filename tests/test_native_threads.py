"""The CPU engine's threads (csrc/include/llsh/common.h parallel_for): an error in a worker reaches
Python as an exception, as it does with one thread, instead of aborting the process; the default
thread count follows the process's CPU affinity, not the machine's core count."""
import os
import subprocess
import sys
import textwrap

import pytest

LOAD_C = textwrap.dedent("""
    import glob, importlib.util, os, resource, sys
    import numpy as np
    pkg = importlib.util.find_spec("llsh_index").submodule_search_locations[0]  # without importing torch
    spec = importlib.util.spec_from_file_location("_C", glob.glob(os.path.join(pkg, "_C*.so"))[0])
    C = importlib.util.module_from_spec(spec); spec.loader.exec_module(C)
    def cap(extra):  # the address space now plus `extra` bytes: allocations beyond it fail
        now = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (now + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))
""")


def run(code):
    return subprocess.run([sys.executable, "-c", LOAD_C + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and sched_setaffinity: Linux")


@needs_linux
@pytest.mark.parametrize("n_threads", [1, 2])
def test_out_of_memory_in_a_build_worker_is_a_memory_error(n_threads):
    """Each table's sort buffers (96 MB here) are allocated in a worker; with 2 threads a
    std::bad_alloc there terminated the process (exit 134)."""
    done = run(f"""
        b, n = 2, 4_000_000
        keys, codes = np.zeros((b, n), np.uint64), np.zeros((b, n, 1), np.float32)
        ids = np.tile(np.arange(n, dtype=np.int64), (b, 1))
        cap(150_000_000)
        try:
            C.build_tables_cpu(keys, codes, ids, True, {n_threads})
            print("built")
        except MemoryError:
            print("MemoryError")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "MemoryError"


@needs_linux
def test_threads_that_cannot_start_leave_their_work_to_the_caller():
    """64 threads whose stacks cannot be mapped: the statistics are still computed, and equal the
    one-thread result (the chunks keep their boundaries)."""
    done = run("""
        U, r = 4096, 8
        offsets = np.arange(U + 1, dtype=np.int64)
        codes = np.random.default_rng(0).random((U, r)).astype(np.float32)
        one = C.bucket_stats_cpu(offsets, codes, 1)
        cap(200_000_000)
        many = C.bucket_stats_cpu(offsets, codes, 64)
        ok = all(np.array_equal(np.asarray(one[k]), np.asarray(many[k])) for k in one) if isinstance(one, dict) \\
            else all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(one, many))
        print("equal" if ok else "differ")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "equal"


@needs_linux
def test_default_threads_follow_the_cpu_affinity():
    """Pinned to one CPU, scoring starts no worker threads (it started one per core of the machine)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a process allowed on at least 2 CPUs to tell the two counts apart")
    code = textwrap.dedent("""
        import os, threading, time
        import numpy as np
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from llsh_index import LearnableLSHIndex
        x = np.random.default_rng(0).standard_normal((200_000, 64)).astype(np.float32)
        index = LearnableLSHIndex(64, n_tables=8, n_bits=16).add(x, progress=False)
        base, peak, stop = len(os.listdir("/proc/self/task")), [0], []
        def watch():
            while not stop:
                peak[0] = max(peak[0], len(os.listdir("/proc/self/task")))
                time.sleep(0.0005)
        t = threading.Thread(target=watch)
        t.start()
        for _ in range(3):
            index.score(x[:100_000])
        stop.append(1)
        t.join()
        print(peak[0] - base - 1)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == 0
