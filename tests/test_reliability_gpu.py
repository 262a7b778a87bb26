"""GPU variants of the reliability tests: inputs on the wrong device, concurrent scoring, files
saved on the GPU, determinism.  Marked `gpu`; skipped where no CUDA device and backend exist."""
import threading

import numpy as np
import pytest

import llsh_index
from llsh_index import DeviceMismatchError, LearnableLSHIndex

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not llsh_index.cuda_available(),
                                 reason=f"no CUDA engine here: {llsh_index.cuda_available(verbose=True)[1]}")]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3000, 64)).astype(np.float32), rng.standard_normal((500, 64)).astype(np.float32)


def test_wrong_device_inputs_raise(data):
    x, q = data
    gpu = LearnableLSHIndex(64, n_tables=4, n_bits=16).to("cuda")
    with pytest.raises(DeviceMismatchError, match="cuda"):
        gpu.add(x)  # numpy input to a GPU index
    gpu.add(torch.from_numpy(x).cuda())
    cpu = LearnableLSHIndex(64, n_tables=4, n_bits=16).add(x)
    with pytest.raises(DeviceMismatchError, match="cpu"):
        cpu.score(torch.from_numpy(q).cuda())


def test_gpu_scores_equal_cpu_and_survive_save(data, tmp_path):
    x, q = data
    cpu = LearnableLSHIndex(64, n_tables=4, n_bits=16).add(x)
    gpu = LearnableLSHIndex(64, n_tables=4, n_bits=16).to("cuda").add(torch.from_numpy(x).cuda())
    for mode in ("mean", "light", "squared"):
        got = gpu.score(torch.from_numpy(q).cuda(), mode=mode).cpu().numpy()
        np.testing.assert_allclose(got, cpu.score(q, mode=mode), rtol=1e-5, atol=1e-5)
    gpu.save(str(tmp_path / "g.llsh"))
    back = LearnableLSHIndex.load(str(tmp_path / "g.llsh"))
    np.testing.assert_allclose(back.score(q), cpu.score(q), rtol=1e-5, atol=1e-5)
    on_gpu = LearnableLSHIndex.load(str(tmp_path / "g.llsh"), device="cuda")
    np.testing.assert_allclose(on_gpu.score(torch.from_numpy(q).cuda()).cpu().numpy(), cpu.score(q),
                               rtol=1e-5, atol=1e-5)


def test_concurrent_gpu_scores_equal_serial(data):
    x, q = data
    gpu = LearnableLSHIndex(64, n_tables=4, n_bits=16).to("cuda").add(torch.from_numpy(x).cuda())
    qt = torch.from_numpy(q).cuda()
    serial = gpu.score(qt).cpu().numpy()
    out = [None] * 4

    def work(i):
        out[i] = gpu.score(qt).cpu().numpy()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in out:
        np.testing.assert_array_equal(o, serial)


def test_gpu_build_is_deterministic(data):
    x, _ = data
    a = LearnableLSHIndex(64, n_tables=4, n_bits=16).to("cuda").add(torch.from_numpy(x).cuda())
    b = LearnableLSHIndex(64, n_tables=4, n_bits=16).to("cuda").add(torch.from_numpy(x).cuda())
    for k in ("keys", "offsets", "ids", "codes", "bucket_sum"):
        assert torch.equal(a._tables[k], b._tables[k]), k
