"""The ``cuda`` clustering backend against the CPU engine: labels, MST edges and k-NN votes must be identical.

Runs natively where a GPU is present and under numba's CUDA simulator elsewhere (conftest switches it on), so every
CI run executes the kernels. The simulator runs each GPU thread as a Python thread: problems here are small.
"""

import logging
import subprocess
import sys
import threading
import time
import warnings

import numba
import numpy as np
import pytest

pytest.importorskip("numba_cuda")

from numba import cuda  # noqa: E402

from meds_core.clustering import (  # noqa: E402
    GPUFallbackWarning,
    HDBSCANParams,
    _cuda_engine,
    _gpu,
    _registry,
    cluster_batch,
    cuda_status,
    hdbscan_batch,
    resolve_backend,
)
from meds_core.clustering._cuda_engine import (  # noqa: E402
    check_prim_edges,
    hdbscan_batch_cuda,
    knn_vote_packed_cuda,
    mst_edges_cuda,
)
from meds_core.clustering._engine import mst_edges  # noqa: E402
from meds_core.clustering._vote import knn_vote_packed, knn_vote_packed_for, knn_vote_packed_numba  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _fast_simulator_threads():
    """The simulator hands the GIL between its threads at every barrier: a short switch interval speeds it up."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(old)


def blobs(seed, n, d=3, modes=3, decimals=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + rng.integers(0, modes, size=(n, 1)) * 5.0
    return np.round(X, decimals) if decimals is not None else X


def ties(seed, n, d=2):
    """Points on a small integer grid: many equal distances and duplicate rows, where only the tie rule decides."""
    return np.random.default_rng(seed).integers(0, 4, size=(n, d)).astype(np.float64)


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# Problems of every kind in one batch: empty, a single row, below min_cluster_size, tied, clustered, two widths.
BATCH = [np.empty((0, 3)), blobs(1, 1), blobs(2, 2), ties(3, 24, 3), blobs(4, 28), blobs(5, 16, decimals=0),
         ties(6, 20, 3), blobs(7, 3)]
MIXED = BATCH[:4] + [ties(8, 18, 5), blobs(9, 12, d=5)]


@pytest.mark.parametrize("kwargs", [dict(min_cluster_size=2, min_samples=1), dict(min_cluster_size=3, min_samples=2),
                                    dict(min_cluster_size=4, min_samples=None, cluster_selection_method="leaf"),
                                    dict(min_cluster_size=3, min_samples=3, allow_single_cluster=True),
                                    dict(min_cluster_size=2, min_samples=2, cluster_selection_epsilon=1.5)],
                         ids=["mcs2-ms1", "mcs3-ms2", "leaf", "single", "epsilon"])
def test_labels_equal_the_cpu_engine(kwargs):
    got, want = hdbscan_batch_cuda(BATCH, **kwargs), hdbscan_batch(BATCH, **kwargs)
    assert same(got, want)
    assert all(lab.dtype == np.int64 for lab in got)
    assert any(len(set(lab.tolist()) - {-1}) >= 2 for lab in got)  # the batch does form clusters


def test_labels_equal_the_cpu_engine_for_mixed_widths_and_the_hdbscan_library():
    hdbscan = pytest.importorskip("hdbscan")
    got = hdbscan_batch_cuda(MIXED, 3, 1)
    assert same(got, hdbscan_batch(MIXED, 3, 1))
    X = MIXED[-1]
    assert np.array_equal(got[-1], hdbscan.HDBSCAN(min_cluster_size=3, min_samples=1).fit(X).labels_)


@pytest.mark.parametrize("min_samples", [1, 2, 5, 40])
def test_mst_edges_equal_the_cpu_engine_edge_for_edge(min_samples):
    problems = [ties(10 + min_samples, 22, 2), blobs(11, 17, decimals=0), blobs(12, 2), blobs(13, 1), np.empty((0, 3))]
    problems[1][5] = problems[1][9]  # a duplicate row: zero distance
    for (s, d, w), (s0, d0, w0) in zip(mst_edges_cuda(problems, min_samples), mst_edges(problems, min_samples)):
        assert np.array_equal(s, s0) and np.array_equal(d, d0) and np.array_equal(w, w0)  # bit-equal weights


def _packed_cpu_mst(problems, min_samples):
    """The CPU engine's MSTs packed as the device returns them: src, dst, weight_sq [E], n, edges [P]."""
    parts = mst_edges(problems, min_samples)
    n = np.array([len(x) for x in problems], dtype=np.int64)
    return (np.concatenate([s for s, _, _ in parts]), np.concatenate([d for _, d, _ in parts]),
            np.concatenate([w for _, _, w in parts]) ** 2, n, np.where(n >= 2, n - 1, 0))


def test_device_mst_check_passes_trees_and_names_the_first_bad_edge():
    problems = [ties(3, 24, 3), blobs(1, 1), blobs(4, 28), np.empty((0, 3)), blobs(7, 3)]
    src, dst, w, n, edges = _packed_cpu_mst(problems, 2)
    check_prim_edges(src, dst, w, n, edges)  # the CPU engine's Prim trees pass
    first = 23  # problem 2's first edge (problem 0 has 23 edges, problem 1 none)
    corruptions = {
        "row out of range": lambda s, d, w: d.__setitem__(first + 4, 28),
        "a row joined twice": lambda s, d, w: d.__setitem__(first + 4, d[first + 3]),
        "row 0 joined": lambda s, d, w: d.__setitem__(first, 0),
        "source joined later": lambda s, d, w: s.__setitem__(first + 2, d[first + 9]),
        "garbage index": lambda s, d, w: s.__setitem__(first + 2, 4616925205031041879),
        "NaN weight": lambda s, d, w: w.__setitem__(first + 1, np.nan),
    }
    for what, corrupt in corruptions.items():
        s, d, ww = src.copy(), dst.copy(), w.copy()
        corrupt(s, d, ww)
        with pytest.raises(_gpu.GPUResultError, match=r"the GPU's MST is not a tree: edge \d+ of problem 2 "):
            check_prim_edges(s, d, ww, n, edges)
        assert _gpu.is_gpu_failure(_gpu.GPUResultError(what))  # so the cuda backend falls back to the CPU engine


class _SlowShape:
    """A shape that sleeps while numpy reads it: a thread switch then lands between the simulator's lookup of a
    block's shared array and its store (the window of the race tests/_cudasim.py closes)."""

    def __init__(self, *dims):
        self.dims = dims

    def __len__(self):
        return len(self.dims)

    def __getitem__(self, i):
        time.sleep(0.01)
        return self.dims[i]


def test_simulator_gives_every_thread_of_a_block_the_same_shared_array():
    if not numba.config.ENABLE_CUDASIM:
        pytest.skip("a real GPU: shared memory is the hardware's")
    import _cudasim
    from numba.cuda.simulator import kernelapi

    assert _cudasim.install()  # conftest installed it already: installing again is a no-op
    shared, barrier, got = kernelapi.FakeCUDAShared(0), threading.Barrier(8), []

    def thread():
        barrier.wait()
        got.append(shared.array(_SlowShape(2, 4), numba.float64))

    threads = [threading.Thread(target=thread) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(a is got[0] for a in got) and got[0].shape == (2, 4)


def test_device_inputs_need_no_host_copy_and_give_the_same_labels():
    want = hdbscan_batch(BATCH, 3, 2)
    as_device = [cuda.to_device(x.astype(np.float32).astype(np.float64)) for x in BATCH]
    assert same(hdbscan_batch_cuda(as_device, 3, 2), want)
    X32 = [x.astype(np.float32) for x in BATCH]  # float32 on the device is cast to float64 there
    assert same(hdbscan_batch_cuda([cuda.to_device(x) for x in X32], 3, 2), hdbscan_batch(X32, 3, 2))
    packed, offsets = np.concatenate(BATCH), np.cumsum([0] + [len(x) for x in BATCH])
    assert same(hdbscan_batch_cuda(cuda.to_device(packed), 3, 2, offsets=offsets), want)
    assert same(hdbscan_batch_cuda(packed, 3, 2, offsets=offsets), want)


def test_bad_input_behaves_as_in_the_cpu_engine():
    bad = [blobs(20, 6), blobs(21, 7)]
    bad[1][4, 2] = np.nan
    for run in (hdbscan_batch_cuda, hdbscan_batch):
        with pytest.raises(ValueError, match=r"problem 1 row 4 is not finite; drop or impute NaN/inf rows first"):
            run(bad, 2, 1)
    with pytest.raises(ValueError, match=r"problem 1 row 4 is not finite"):
        hdbscan_batch_cuda([cuda.to_device(x) for x in bad], 2, 1)
    with pytest.raises(ValueError, match=r"problem 1 row 4 is not finite"):  # packed on the device
        hdbscan_batch_cuda(cuda.to_device(np.concatenate(bad)), 2, 1, offsets=np.array([0, 6, 13]))
    with pytest.raises(ValueError, match=r"min_cluster_size=1 must be an integer >= 2"):
        hdbscan_batch_cuda(bad[:1], 1)
    assert hdbscan_batch_cuda([], 2, 1) == [] == hdbscan_batch([], 2, 1)
    small = [blobs(22, 4), np.empty((0, 3)), blobs(23, 1)]  # all below min_cluster_size: all noise, no launch
    assert same(hdbscan_batch_cuda(small, 5, 1), hdbscan_batch(small, 5, 1))
    assert all((lab == -1).all() for lab in hdbscan_batch_cuda(small, 5, 1))


def _votes_case(seed):
    rng = np.random.default_rng(seed)
    stored, labels, counts = [], [], []
    for n, m in [(1, 2), (3, 0), (7, 3), (12, 4), (5, 1)]:
        S = np.round(rng.normal(size=(n, 4)), 0) + 0.5  # coarse: equal distances happen
        stored.append(S / np.linalg.norm(S, axis=1, keepdims=True))
        labels.append(rng.integers(-1, 3, size=n).astype(np.int64))
        counts.append(m)
    Q = np.concatenate([s[rng.integers(0, len(s), size=m)] for s, m in zip(stored, counts)])  # exact duplicates too
    Q[::2] += rng.normal(scale=0.05, size=Q[::2].shape)
    return stored, labels, Q / np.linalg.norm(Q, axis=1, keepdims=True), np.array(counts)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_knn_votes_equal_the_numba_vote(k):
    stored, labels, Q, counts = _votes_case(k)
    got = knn_vote_packed_cuda(stored, labels, Q, counts, k)
    want = knn_vote_packed_numba(stored, labels, Q, counts, k)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert np.array_equal(got[0], knn_vote_packed(stored, labels, Q, counts, k)[0])
    on_device = knn_vote_packed_cuda(stored, labels, cuda.to_device(Q.astype(np.float32)), counts, k)
    assert np.array_equal(on_device[0], knn_vote_packed_numba(stored, labels, Q.astype(np.float32), counts, k)[0])


def test_cluster_batch_and_vote_through_the_cuda_backend():
    params = HDBSCANParams(3, 1)
    assert same(cluster_batch(BATCH, params, "cuda"), cluster_batch(BATCH, params, "numba"))
    stored, labels, Q, counts = _votes_case(5)
    got, want = knn_vote_packed_for("cuda")(stored, labels, Q, counts, 3), knn_vote_packed_numba(stored, labels, Q,
                                                                                                 counts, 3)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_cluster_batch_auto_keeps_device_problems_on_the_gpu(monkeypatch, caplog):
    monkeypatch.setattr(_registry, "_LOGGED", set())
    params = HDBSCANParams(2, 1)
    on_device = [cuda.to_device(x) for x in BATCH[3:6]]
    with caplog.at_level(logging.INFO, logger="meds_core.clustering"):
        got = cluster_batch(on_device, params, "auto")
    assert same(got, cluster_batch(BATCH[3:6], params, "numba"))
    assert "'auto' -> 'cuda': the features are on a GPU" in caplog.text


def test_gpu_failure_falls_back_to_the_cpu_engine_with_one_warning(monkeypatch):
    from numba.cuda.cudadrv.driver import CudaAPIError

    def out_of_memory(*args, **kwargs):
        raise CudaAPIError(2, "Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY")

    monkeypatch.setattr(_cuda_engine, "_device_mst", out_of_memory)
    params = HDBSCANParams(3, 1)
    run = _registry._FACTORIES["cuda"]()
    with pytest.warns(GPUFallbackWarning, match=r"GPU clustering failed \(CudaAPIError: .*OUT_OF_MEMORY.*\); this step "
                                                r"ran on the CPU engine") as record:
        got = run(BATCH[3:], params)
    assert len(record) == 1 and same(got, hdbscan_batch(BATCH[3:], 3, 1))
    with pytest.warns(GPUFallbackWarning):  # device problems are brought to the host for the CPU engine
        assert same(run([cuda.to_device(x) for x in BATCH[3:5]], params), hdbscan_batch(BATCH[3:5], 3, 1))
    monkeypatch.setattr(_cuda_engine, "knn_vote_kernel", None)  # a launch that fails: 'NoneType' is not subscriptable
    stored, labels, Q, counts = _votes_case(1)
    with pytest.raises(TypeError):  # not a GPU failure: a bug surfaces instead of hiding behind the fallback
        knn_vote_packed_for("cuda")(stored, labels, Q, counts, 3)
    bad = [blobs(30, 6)]
    bad[0][2, 0] = np.inf
    with pytest.raises(ValueError, match="not finite"):  # bad input is no GPU failure either
        run(bad, params)


def test_auto_picks_cuda_only_for_features_on_a_usable_gpu(monkeypatch, caplog):
    monkeypatch.setattr(_registry, "_LOGGED", set())
    reason = cuda_status()["reason"]
    with caplog.at_level(logging.INFO, logger="meds_core.clustering"):
        assert resolve_backend("auto", np.zeros((2, 3))) == "numba"
        assert resolve_backend("auto", cuda.to_device(np.zeros((2, 3)))) == "cuda"
        assert resolve_backend("auto", [cuda.to_device(np.zeros((2, 3)))]) == "cuda"  # logged once
        monkeypatch.setattr(_gpu, "_STATUS", [dict(usable=False, reason="numba-cuda sees no usable GPU (test)",
                                                   device=None, simulator=False, numba_cuda="x")])
        assert resolve_backend("auto", cuda.to_device(np.zeros((2, 3)))) == "numba"  # a new reason: logged
    lines = [r.getMessage() for r in caplog.records if r.name == "meds_core.clustering"]
    assert lines == ["clustering backend 'auto' -> 'numba': the features are on the CPU.",
                     f"clustering backend 'auto' -> 'cuda': the features are on a GPU and {reason}.",
                     "clustering backend 'auto' -> 'numba': the features are on a GPU but numba-cuda sees no usable "
                     "GPU (test)."]
    assert resolve_backend("cuda") == "cuda"


@pytest.mark.parametrize("min_samples", [1, 2, 3, 5])
def test_cuml_min_samples_mapping_matches_the_hdbscan_library(min_samples):
    pytest.importorskip("cuml")  # only where RAPIDS cuML (and a GPU) is installed
    two_triples = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0], [11.0, 10.0], [10.0, 11.0]])
    problems = [two_triples, blobs(40, 40, d=3), blobs(41, 60, d=5)]  # well separated: float32 cannot flip a tie
    params = HDBSCANParams(3, min_samples)
    assert same(cluster_batch(problems, params, "cuml"), cluster_batch(problems, params, "hdbscan"))


def test_cuda_status_reports_what_it_sees():
    status = cuda_status(refresh=True)
    assert status["usable"] and status["numba_cuda"]
    assert status["simulator"] == bool(__import__("numba").config.ENABLE_CUDASIM)
    assert status["device"] and status["reason"]


def test_without_numba_cuda_the_backend_says_how_to_install_it(monkeypatch):
    real = _gpu.importlib.util.find_spec
    monkeypatch.setattr(_gpu, "_STATUS", [])  # a fresh cache, restored afterwards
    monkeypatch.setattr(_gpu.importlib.util, "find_spec", lambda name: None if name == "numba_cuda" else real(name))
    status = cuda_status()
    assert not status["usable"] and status["numba_cuda"] is None
    assert status["reason"] == "numba-cuda is not installed (pip install 'meds_core[cuda]' or pip install numba-cuda)"
    with pytest.raises(ImportError, match=r"backend 'cuda' needs numba-cuda: pip install 'meds_core\[cuda\]'"):
        _registry._FACTORIES["cuda"]()
    monkeypatch.setattr(_registry, "_LOGGED", set())
    assert resolve_backend("auto", cuda.to_device(np.zeros((2, 3)))) == "numba"
    monkeypatch.undo()
    assert cuda_status()["usable"]


def test_import_meds_core_never_imports_numba_cuda():
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.startswith(('numba_cuda', 'numba.cuda')): raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "import meds_core, meds_core.clustering as c\n"
            "from meds_core.clustering import cuda_status, resolve_backend\n"
            "assert resolve_backend('auto') == 'numba'\n"
            "assert not any(m.startswith('numba.cuda') for m in sys.modules)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_memory_on_the_cuda_backend_matches_the_numba_backend():
    from meds_core.step.config import MEDSConfig
    from meds_core.step.memory import ErrorMemory

    rng = np.random.default_rng(0)
    mems = {b: ErrorMemory(MEDSConfig(backend=b, min_cluster_size=2, min_samples=1)) for b in ("cuda", "numba")}
    voted = 0
    for _ in range(3):  # later steps vote against the rows (and labels) the first ones stored
        keys = rng.integers(0, 2, size=16).tolist()
        feats = blobs(int(rng.integers(1 << 30)), 16, d=4).astype(np.float32)
        correct = rng.integers(0, 2, size=16)
        with warnings.catch_warnings():
            warnings.simplefilter("error", GPUFallbackWarning)
            a, b = (mems[name].update(keys, feats, correct) for name in ("cuda", "numba"))
        assert np.array_equal(a.label, b.label) and np.array_equal(a.cluster_size, b.cluster_size)
        voted += int((a.cluster_size > 0).sum())
    assert voted > 0
