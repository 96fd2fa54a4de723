"""ErrorMemory: step semantics against the literal reference oracle, bounds, inputs, persistence."""

from __future__ import annotations

import os

import numpy as np
import pytest

from meds_core import ErrorMemory, MEDSConfig, MemoryFileError
from meds_core.clustering import get_backend
from meds_core.testing import ReferenceMemory, blob_stream, registered_backend


def _config(**kw):
    return MEDSConfig(use_last_n_layers=6, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("noise_policy", ["pool", "ignore"])
def test_matches_reference_step_exactly(seed, noise_policy):
    memory = ErrorMemory(_config(noise_policy=noise_policy, backend="hdbscan"))
    ref = ReferenceMemory(noise_policy=noise_policy)
    saw_cluster = False
    for keys, feats, correct in blob_stream(seed):
        got = memory.update(keys, feats, correct)
        sizes, labels = ref.step(keys, feats, correct)
        np.testing.assert_array_equal(got.cluster_size, sizes)
        np.testing.assert_array_equal(got.label, labels)
        saw_cluster |= bool((sizes > 1).any())
    assert saw_cluster, "the stream must produce non-trivial clusters for the comparison to mean anything"
    for mk, rows in ref.feats.items():
        np.testing.assert_array_equal(memory.rows(*mk), np.asarray(rows, dtype=np.float32))
        np.testing.assert_array_equal(memory.labels(*mk), ref.labels[mk])


def test_matches_reference_with_eviction_and_min_cluster_size():
    memory = ErrorMemory(_config(max_rows_per_memory=20, min_cluster_size=3, min_samples=2, backend="hdbscan"))
    ref = ReferenceMemory(min_cluster_size=3, min_samples=2, cap=20)
    for keys, feats, correct in blob_stream(7, steps=8):
        got = memory.update(keys, feats, correct)
        sizes, labels = ref.step(keys, feats, correct)
        np.testing.assert_array_equal(got.cluster_size, sizes)
        np.testing.assert_array_equal(got.label, labels)
    assert max(len(memory.rows(*mk)) for mk in memory.keys()) == 20
    for mk, rows in ref.feats.items():  # the oldest rows went first
        np.testing.assert_array_equal(memory.rows(*mk), np.asarray(rows, dtype=np.float32))


def test_single_method_counts_stored_rows():
    memory = ErrorMemory(_config(cluster_method="single"))
    ref = ReferenceMemory(method="single")
    for keys, feats, correct in blob_stream(3, steps=4):
        got = memory.update(keys, feats, correct)
        sizes, _ = ref.step(keys, feats, correct)
        np.testing.assert_array_equal(got.cluster_size, sizes)
        assert got.stats["backend_calls"] == 0


def test_first_visit_has_size_zero_and_current_step_rows_never_count():
    memory = ErrorMemory(_config())
    feats = np.ones((5, 6), np.float32)  # five identical wrong rows of one prompt in ONE step
    res = memory.update(["p"] * 5, feats, np.zeros(5))
    np.testing.assert_array_equal(res.cluster_size, 0)
    res = memory.update(["p"], feats[:1], np.zeros(1))
    # one mode only: allow_single_cluster=False makes it noise, and noise pools (reference default)
    assert res.cluster_size[0] == 5 and res.label[0] == -1


def test_correct_and_wrong_are_separate_memories():
    memory = ErrorMemory(_config())
    feats = np.ones((4, 6), np.float32)
    memory.update(["p"] * 4, feats, [1, 1, 0, 0])
    assert len(memory) == 2 and len(memory.rows("p", 1)) == 2 and len(memory.rows("p", 0)) == 2
    res = memory.update(["p", "p"], feats[:2], [True, False])
    np.testing.assert_array_equal(res.cluster_size, [2, 2])
    np.testing.assert_array_equal(res.group, [1, 0])


class _CountingBackend:
    """Delegates to the real hdbscan backend and counts the calls."""

    calls = 0

    @classmethod
    def factory(cls):
        real = get_backend("hdbscan")

        def run(problems, params):
            cls.calls += 1
            return real(problems, params)

        return run


@pytest.fixture
def counting_backend():
    with registered_backend("counting-hdbscan", _CountingBackend.factory) as name:
        yield name


def test_one_backend_call_per_step_for_every_touched_memory(counting_backend):
    memory = ErrorMemory(_config(backend=counting_backend))
    for i, (keys, feats, correct) in enumerate(blob_stream(5, steps=4, prompts=10), start=1):
        res = memory.update(keys, feats, correct)
        assert _CountingBackend.calls == i
        assert res.stats["backend_calls"] == 1
        assert res.stats["memories_touched"] == 20


class _FlakyBackend:
    """The real hdbscan backend, or an error while ``fail`` is set."""

    fail = False

    @classmethod
    def factory(cls):
        real = get_backend("hdbscan")

        def run(problems, params):
            if cls.fail:
                raise RuntimeError("backend unavailable")
            return real(problems, params)

        return run


@pytest.fixture
def flaky_backend():
    with registered_backend("flaky-hdbscan", _FlakyBackend.factory) as name:
        yield name


def _failing_update(memory, *step):
    _FlakyBackend.fail = True
    try:
        with pytest.raises(RuntimeError, match="backend unavailable"):
            memory.update(*step)
    finally:
        _FlakyBackend.fail = False


def test_a_failing_backend_leaves_the_memory_unchanged(flaky_backend):
    # cap 30 with ~3-13 rows per memory per step: steps append in place, evict, and move memories to new buffers
    stream = list(blob_stream(31, steps=7))
    keys, feats, correct = stream[5]
    stream[5] = (keys + ["new-prompt"], np.vstack([feats, feats[:1]]), np.append(correct, 0))  # and a new memory
    failing, clean = (ErrorMemory(_config(max_rows_per_memory=30, backend=flaky_backend)) for _ in range(2))
    for i, step in enumerate(stream):
        if i >= 3:
            before = failing.state_dict()
            _failing_update(failing, *step)
            after = failing.state_dict()
            assert after["keys"] == before["keys"] and (after["dim"], after["step"]) == (before["dim"], before["step"])
            for name in ("groups", "lengths", "rows", "labels"):
                np.testing.assert_array_equal(after[name], before[name])
        got, want = failing.update(*step), clean.update(*step)
        np.testing.assert_array_equal(got.cluster_size, want.cluster_size)
        np.testing.assert_array_equal(got.label, want.label)
    a, b = failing.state_dict(), clean.state_dict()
    assert a["keys"] == b["keys"]
    for name in ("groups", "lengths", "rows", "labels"):
        np.testing.assert_array_equal(a[name], b[name])
    fresh = ErrorMemory(_config(backend=flaky_backend))
    _failing_update(fresh, *stream[0])
    assert len(fresh) == 0 and fresh.step == 0 and fresh.state_dict()["dim"] == 0


def _sparse_ids_factory():
    real = get_backend("hdbscan")
    return lambda problems, params: [np.where(lab >= 0, lab * 1_000_003 + 11, -1) for lab in real(problems, params)]


def test_sizes_count_stored_labels_whatever_ids_the_backend_uses():
    with registered_backend("sparse-ids-hdbscan", _sparse_ids_factory) as name:
        memory = ErrorMemory(_config(backend=name))
        for keys, feats, correct in blob_stream(41, steps=4):
            stored = {mk: memory.labels(*mk) for mk in memory.keys()}
            res = memory.update(keys, feats, correct)
            for b in np.flatnonzero(res.valid):
                mk = (keys[b], int(correct[b]))
                want = (stored[mk] == res.label[b]).sum() if mk in stored else 0
                assert res.cluster_size[b] == want
        assert max(memory.labels(*mk).max() for mk in memory.keys()) > 1_000_000


def test_batch_permutation_gives_the_same_size_per_row():
    stream = list(blob_stream(11, steps=5))
    a, b = ErrorMemory(_config()), ErrorMemory(_config())
    for keys, feats, correct in stream[:4]:
        a.update(keys, feats, correct)
        b.update(keys, feats, correct)
    keys, feats, correct = stream[4]
    perm = np.random.default_rng(0).permutation(len(keys))
    ra = a.update(keys, feats, correct)
    rb = b.update([keys[i] for i in perm], feats[perm], correct[perm])
    np.testing.assert_array_equal(ra.cluster_size[perm], rb.cluster_size)
    np.testing.assert_array_equal(ra.label[perm], rb.label)


def test_skipped_rows_are_counted_and_the_rest_processed():
    memory = ErrorMemory(_config())
    feats = np.random.default_rng(0).normal(size=(6, 6)).astype(np.float32)
    feats[1, 2] = np.nan
    feats[2, 0] = np.inf
    res = memory.update(list("abcdef"), feats, [0, 0, 1, -1, 1, 0])
    np.testing.assert_array_equal(res.valid, [True, False, False, False, True, True])
    assert res.stats["skipped_rows"] == 3
    assert res.stats["skipped_nonfinite"] == 2 and res.stats["skipped_unknown"] == 1
    assert memory.num_rows == 3 and res.stats["rows_stored"] == 3
    np.testing.assert_array_equal(res.group, [0, 0, 1, -1, 1, 0])


def test_empty_single_and_all_nan_batches():
    memory = ErrorMemory(_config())
    res = memory.update([], np.empty((0, 6), np.float32), [])
    assert res.cluster_size.shape == (0,) and res.stats["rows_added"] == 0
    res = memory.update(["x"], np.ones((1, 6)), [0])
    assert res.valid.tolist() == [True] and memory.num_rows == 1
    res = memory.update(["x", "y"], np.full((2, 6), np.nan), [0, 0])
    assert res.stats["skipped_rows"] == 2 and memory.num_rows == 1
    np.testing.assert_array_equal(res.cluster_size, 0)


def test_torch_inputs_are_accepted():
    torch = pytest.importorskip("torch")
    memory = ErrorMemory(_config())
    res = memory.update(torch.arange(4), torch.randn(4, 6, dtype=torch.bfloat16), torch.tensor([True, False] * 2))
    assert res.valid.all() and memory.keys()[0][0] == 0


@pytest.mark.parametrize(
    "keys, feats, correct, match",
    [
        (["a"], np.ones((2, 6)), [0, 0], r"features has shape \(2, 6\); expected \(1, F\)"),
        (["a", "b"], np.ones((2, 6)), [0, 2], r"correct holds \[2\]"),
        (["a", "b"], np.ones((2, 6)), [0], r"correct has shape \(1,\)"),
        (["a", "b"], np.ones((2, 6), dtype=np.int64), [0, 1], "floating-point"),
    ],
)
def test_bad_inputs_name_the_value(keys, feats, correct, match):
    with pytest.raises(ValueError, match=match):
        ErrorMemory(_config()).update(keys, feats, correct)


def test_bad_key_type_and_dimension_change():
    memory = ErrorMemory(_config())
    with pytest.raises(TypeError, match=r"prompt key \(1, 2\) has type tuple"):
        memory.update([(1, 2)], np.ones((1, 6)), [0])
    memory.update(["a"], np.ones((1, 6)), [0])
    with pytest.raises(ValueError, match="features have 5 columns but this memory stores 6"):
        memory.update(["a"], np.ones((1, 5)), [0])


# ---------------------------------------------------------------------------------------------- persistence
def test_save_load_continues_the_stream_bit_identically(tmp_path):
    stream = list(blob_stream(21, steps=7))
    full = ErrorMemory(_config(max_rows_per_memory=30))
    expected = [full.update(*s) for s in stream]
    part = ErrorMemory(_config(max_rows_per_memory=30))
    for s in stream[:4]:
        part.update(*s)
    path = tmp_path / "ckpt" / "meds_memory.bin"
    part.save(path)
    resumed = ErrorMemory.load(path)
    assert resumed.step == 4 and len(resumed) == len(part) and resumed.config == part.config
    for s, want in zip(stream[4:], expected[4:]):
        got = resumed.update(*s)
        np.testing.assert_array_equal(got.cluster_size, want.cluster_size)
        np.testing.assert_array_equal(got.label, want.label)
    a, b = full.state_dict(), resumed.state_dict()
    assert a["keys"] == b["keys"] and a["step"] == b["step"]
    for name in ("groups", "lengths", "rows", "labels"):
        np.testing.assert_array_equal(a[name], b[name])
    assert [p.name for p in path.parent.iterdir()] == ["meds_memory.bin"]  # no temp file left behind


def test_keys_keep_their_type_through_a_file(tmp_path):
    memory = ErrorMemory(_config())
    memory.update([7, "7", 2**40], np.ones((3, 6)), [0, 0, 1])
    memory.save(tmp_path / "m.bin")
    assert ErrorMemory.load(tmp_path / "m.bin").keys() == [(7, 0), ("7", 0), (2**40, 1)]


def test_state_dict_round_trip_into_an_existing_memory():
    memory = ErrorMemory(_config())
    for s in blob_stream(2, steps=3):
        memory.update(*s)
    other = ErrorMemory(_config())
    other.load_state_dict(memory.state_dict())
    assert other.keys() == memory.keys() and other.num_rows == memory.num_rows
    with pytest.raises(ValueError, match="different settings"):
        ErrorMemory(_config(min_cluster_size=4)).load_state_dict(memory.state_dict())
    ErrorMemory(_config(min_cluster_size=4)).load_state_dict(memory.state_dict(), strict=False)


def test_corrupt_foreign_and_newer_files_raise_clear_errors(tmp_path):
    memory = ErrorMemory(_config())
    memory.update(["a", "b"], np.ones((2, 6)), [0, 1])
    path = tmp_path / "m.bin"
    memory.save(path)
    data = bytearray(path.read_bytes())

    flipped = tmp_path / "flipped.bin"
    data_f = bytearray(data)
    data_f[len(data_f) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data_f))
    with pytest.raises(MemoryFileError, match="checksum mismatch"):
        ErrorMemory.load(flipped)

    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(bytes(data[:-40]))
    with pytest.raises(MemoryFileError, match="corrupt or truncated"):
        ErrorMemory.load(truncated)

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.ones(3))
    with pytest.raises(MemoryFileError, match="not a MEDS memory file"):
        ErrorMemory.load(foreign)

    import hashlib
    import struct

    newer = bytearray(data[:-32])
    struct.pack_into("<I", newer, 8, 99)
    (tmp_path / "newer.bin").write_bytes(bytes(newer) + hashlib.sha256(bytes(newer)).digest())
    with pytest.raises(MemoryFileError, match="file version 99"):
        ErrorMemory.load(tmp_path / "newer.bin")
    assert isinstance(MemoryFileError("x"), ValueError)


def test_save_replaces_an_existing_file_atomically(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"old content")
    memory = ErrorMemory(_config())
    memory.update(["a"], np.ones((1, 6)), [0])
    memory.save(str(path))
    assert ErrorMemory.load(str(path)).num_rows == 1
    assert sorted(os.listdir(tmp_path)) == ["m.bin"]


# ---------------------------------------------------------------------------------------------- meaning checks
def _saved(tmp_path, **config):
    memory = ErrorMemory(_config(**config))
    for s in blob_stream(5, steps=3):
        memory.update(*s)
    path = tmp_path / "good.bin"
    memory.save(path)
    return memory, path


def _parts(path):
    """(header dict, rows float32 [N, F], labels int32 [N]) of a saved file."""
    import json
    import struct

    data = path.read_bytes()
    _, _, head_len = struct.unpack_from("<8sIQ", data)
    start = 20 + head_len
    header = json.loads(data[20:start])
    n, f = header["arrays"]["rows"][0]
    rows = np.frombuffer(data, "<f4", n * f, start).reshape(n, f).copy()
    labels = np.frombuffer(data, "<i4", n, start + 4 * n * f).copy()
    return header, rows, labels


def _forge(path, header, rows, labels, raw_head=None):
    """Write a file with a VALID checksum around any header and arrays: only the meaning checks can catch it."""
    import hashlib
    import json
    import struct

    rows, labels = np.ascontiguousarray(rows, "<f4"), np.ascontiguousarray(labels, "<i4")
    if raw_head is None:
        header = dict(header, arrays={"rows": [list(rows.shape), rows.nbytes],
                                      "labels": [list(labels.shape), labels.nbytes]})
        raw_head = json.dumps(header).encode()
    body = struct.pack("<8sIQ", b"MEDSMEM\0", 1, len(raw_head)) + raw_head + rows.tobytes() + labels.tobytes()
    path.write_bytes(body + hashlib.sha256(body).digest())
    return path


def _shift(h, r, la):
    h["lengths"][0] -= 5
    h["lengths"][1] += 5


def _negative(h, r, la):
    h["lengths"][0] = -h["lengths"][0]
    h["lengths"][1] += 2 * abs(h["lengths"][0])


def _more(h, r, la):
    h["lengths"][0] += 7


def _dup(h, r, la):
    h["keys"][1], h["groups"][1] = h["keys"][0], h["groups"][0]


def _nan(h, r, la):
    r[3] = np.nan


HEADER_BREAKS = {
    "lengths sum differs from the rows": (_more, "lengths"),
    "negative length": (_negative, "lengths"),
    "duplicate (key, group)": (_dup, "keys"),
    "dim differs from the rows' width": (lambda h, r, la: h.update(dim=h["dim"] + 1), "dim"),
    "non-finite row": (_nan, "rows"),
    "negative step": (lambda h, r, la: h.update(step=-1), "step"),
    "format version 0": (lambda h, r, la: h.update(format_version=0), "format_version"),
    "float step": (lambda h, r, la: h.update(step=2.5), "step"),
    "float key": (lambda h, r, la: h["keys"].__setitem__(0, 1.5), "keys"),
    "bool key": (lambda h, r, la: h["keys"].__setitem__(0, True), "keys"),
    "keys as one string": (lambda h, r, la: h.update(keys="abc"), "keys"),
    "group 2": (lambda h, r, la: h["groups"].__setitem__(0, 2), "groups"),
    "groups of another length": (lambda h, r, la: h["groups"].pop(), "groups"),
    "config not a dict": (lambda h, r, la: h.update(config=[1, 2]), "config"),
    "config with an unknown key": (lambda h, r, la: h["config"].update(bogus=1), "config"),
    "config with a bad value": (lambda h, r, la: h["config"].update(knn_k=0), "config"),
    "rows beyond the cap": (lambda h, r, la: h["config"].update(max_rows_per_memory=2), "lengths"),
    "label below -1": (lambda h, r, la: la.__setitem__(0, -7), "labels"),
    "missing field": (lambda h, r, la: h.pop("step"), "step"),
    "string dim": (lambda h, r, la: h.update(dim="6"), "dim"),
    "nested lists as lengths": (lambda h, r, la: h.update(lengths=[[1]] * len(h["keys"])), "lengths"),
}


@pytest.mark.parametrize("case", sorted(HEADER_BREAKS))
def test_a_file_with_a_valid_checksum_but_inconsistent_content_is_refused_naming_the_field(tmp_path, case):
    _, path = _saved(tmp_path)
    header, rows, labels = _parts(path)
    assert len(header["keys"]) >= 2 and min(header["lengths"][:2]) > 5
    breaks, field = HEADER_BREAKS[case]
    breaks(header, rows, labels)
    bad = _forge(tmp_path / "bad.bin", header, rows, labels)
    with pytest.raises(MemoryFileError, match=f"'{field}'"):
        ErrorMemory.load(bad)
    with pytest.raises(MemoryFileError):
        ErrorMemory.load(bad, config=_config())


def test_shifted_lengths_that_still_sum_right_load_exactly_what_the_file_says(tmp_path):
    # A shift that keeps every count valid describes another consistent memory: the checksum signed it, so it
    # loads, and it loads exactly the rows the lengths say (never more rows than the file holds).
    _, path = _saved(tmp_path)
    header, rows, labels = _parts(path)
    _shift(header, rows, labels)
    got = ErrorMemory.load(_forge(tmp_path / "shifted.bin", header, rows, labels))
    assert got.num_rows == len(rows)
    assert len(got.rows(header["keys"][0], header["groups"][0])) == header["lengths"][0]


@pytest.mark.parametrize("raw, what", [
    (b"[" * 100_000 + b"]" * 100_000, "nesting"),
    (b"[1, 2]", "a list"),
    (b"\xff\xfe", "bad utf-8"),
    (b'{"arrays": {"rows": "x", "labels": [[0], 0]}}', "bad array table"),
])
def test_malformed_headers_raise_memory_file_error(tmp_path, raw, what):
    path = _forge(tmp_path / "bad.bin", None, np.zeros((0, 6)), np.zeros(0), raw_head=raw)
    with pytest.raises(MemoryFileError):
        ErrorMemory.load(path)


def test_missing_file_and_directory_raise_memory_file_error(tmp_path):
    with pytest.raises(MemoryFileError, match="does not exist"):
        ErrorMemory.load(tmp_path / "nope.bin")
    with pytest.raises(MemoryFileError, match="is a directory"):
        ErrorMemory.load(tmp_path)


def test_memory_file_error_is_public_and_a_value_error():
    import meds_core

    assert meds_core.MemoryFileError is MemoryFileError and issubclass(MemoryFileError, ValueError)
    assert "MemoryFileError" in meds_core.__all__


def test_load_state_dict_checks_meaning_too():
    memory = ErrorMemory(_config())
    for s in blob_stream(2, steps=2):
        memory.update(*s)
    state = memory.state_dict()
    state["lengths"] = state["lengths"].copy()
    state["lengths"][0] += 1
    with pytest.raises(MemoryFileError, match="'lengths'"):
        ErrorMemory(_config()).load_state_dict(state)
    with pytest.raises(MemoryFileError, match="'state'"):
        ErrorMemory(_config()).load_state_dict([1, 2])


FEATURE_CHANGES = {"use_last_n_layers": 5, "use_layer_diff": True, "final_norm": "all", "answer_marker": "Answer:",
                   "l2_normalize": False}


@pytest.mark.parametrize("name", sorted(FEATURE_CHANGES))
def test_other_feature_settings_refuse_to_load_unless_strict_false(tmp_path, name):
    memory, path = _saved(tmp_path)
    other = MEDSConfig(**dict(memory.config.to_dict(), **{name: FEATURE_CHANGES[name]}))
    with pytest.raises(MemoryFileError, match=f"different settings.*'{name}'"):
        ErrorMemory.load(path, config=other)
    with pytest.raises(MemoryFileError, match=name):
        ErrorMemory(other).load_state_dict(memory.state_dict())
    loose = ErrorMemory.load(path, config=other, strict=False)
    assert loose.num_rows == memory.num_rows and loose.config == other


# ---------------------------------------------------------------------------------------------- storage and budget
def test_stored_form_is_float32_rows_and_int32_labels_only(monkeypatch):
    import meds_core.step.memory

    monkeypatch.setattr(meds_core.step.memory, "_INCREMENTAL_FROM", 4)  # tiny memories keep none: rebuilds too
    memory = ErrorMemory(_config(max_rows_per_memory=40))
    memory._incremental = memory._backend == "numba"  # the incremental path keeps each memory's MST
    for s in blob_stream(3, steps=6):
        memory.update(*s)
    arrays = [a for slot in memory._slots.values() for a in (slot.row_buf, slot.labels)]
    assert {a.dtype for a in arrays} == {np.dtype(np.float32), np.dtype(np.int32)}
    assert all(set(type(slot).__slots__) == {"row_buf", "start", "n", "labels", "state", "state_wait"}
               for slot in memory._slots.values())
    ms = memory._params.min_samples
    with_mst = 0
    for slot in memory._slots.values():  # the incremental engine's state: the MST, or each row's nearest rows
        if slot.state is not None:
            if ms == 1:  # n - 1 edges: u, v (integral values) and weight_sq, one f64 array
                assert (slot.state.dtype, slot.state.shape) == (np.dtype(np.float64), (3, slot.n - 1))
                assert slot.state.flags.owndata and (slot.state[:2] == np.round(slot.state[:2])).all()
            else:  # min_samples squared distances (f64) and rows (int32) per row
                assert [(a.dtype, a.shape) for a in slot.state] == [(np.dtype(np.float64), (ms, slot.n)),
                                                                     (np.dtype(np.int32), (ms, slot.n))]
            with_mst += 1
    assert with_mst > 0 or not memory._incremental, "no state was checked"
    F = memory.state_dict()["dim"]
    held = sum(slot.row_buf.nbytes + slot.labels.nbytes for slot in memory._slots.values())
    # growth room is at most half the rows, or 2x one step's rows per memory (blob_stream: <= 8 per memory)
    bound = sum(max(1.5 * s.n, s.n + 16) for s in memory._slots.values()) * 4 * F + 4 * memory.num_rows
    assert 4 * (F + 1) * memory.num_rows <= held <= bound
    assert memory.labels(*memory.keys()[0]).dtype == np.int64  # the public view stays int64


def _lru_oracle(stream, budget):
    """Plain-python model of the budget: prompts ordered by last visit; evict the oldest, whole, while over."""
    order, rows, evicted = [], {}, []
    for keys, feats, correct in stream:
        valid = np.isfinite(feats).all(1) & (np.asarray(correct) >= 0)
        seen = list(dict.fromkeys(k for k, v in zip(keys, valid) if v))
        for k, v, c in zip(keys, valid, correct):
            if v:
                rows[(k, int(c))] = rows.get((k, int(c)), 0) + 1
        for k in seen:
            if k in order:
                order.remove(k)
            order.append(k)
        n = 0
        while sum(rows.values()) > budget and order and order[0] not in seen:
            k = order.pop(0)
            rows.pop((k, 0), None)
            rows.pop((k, 1), None)
            n += 1
        evicted.append(n)
    return order, rows, evicted


def test_global_budget_evicts_least_recently_visited_prompts_whole(tmp_path):
    rng = np.random.default_rng(0)
    stream = []
    for _ in range(12):
        keys = rng.choice(30, size=10, replace=True).tolist()
        stream.append((keys, rng.normal(size=(10, 6)), rng.integers(0, 2, size=10)))
    budget = 25
    memory = ErrorMemory(_config(max_total_rows=budget, cluster_method="single"))
    order, rows, evicted = _lru_oracle(stream, budget)
    got = [memory.update(*s).stats for s in stream]
    assert [s["evicted_prompts"] for s in got] == evicted and sum(evicted) > 5
    assert all(s["rows_stored"] <= budget for s in got)
    assert memory.num_rows == sum(rows.values()) == sum(len(memory.rows(*mk)) for mk in memory.keys())
    assert list(dict.fromkeys(k for k, _ in memory.keys())) == order
    assert {mk: len(memory.rows(*mk)) for mk in memory.keys()} == rows
    # the recency order survives a file, so a resumed run evicts the same prompts
    memory.save(tmp_path / "m.bin")
    assert ErrorMemory.load(tmp_path / "m.bin").keys() == memory.keys()


def test_budget_never_evicts_the_current_batch():
    memory = ErrorMemory(_config(max_total_rows=3, cluster_method="single"))
    memory.update(["a", "a"], np.ones((2, 6)), [0, 1])
    stats = memory.update(["b"] * 5, np.ones((5, 6)), [0] * 5).stats
    assert stats["evicted_prompts"] == 1 and stats["evicted_rows"] == 2 and memory.keys() == [("b", 0)]
    assert memory.num_rows == 5  # over budget only while one step's own prompts exceed it


def test_budget_and_eviction_keep_the_stream_bit_identical_through_a_file(tmp_path):
    stream = []
    for t, (keys, feats, correct) in enumerate(blob_stream(8, steps=10)):  # two of the six prompts per step
        rows = np.r_[16 * (t % 6):16 * (t % 6) + 16, 16 * ((t + 2) % 6):16 * ((t + 2) % 6) + 16]
        stream.append(([keys[i] for i in rows], feats[rows], correct[rows]))
    cfg = dict(max_rows_per_memory=30, max_total_rows=90)
    full = ErrorMemory(_config(**cfg))
    expected = [full.update(*s) for s in stream]
    assert sum(e.stats["evicted_prompts"] for e in expected) > 0
    part = ErrorMemory(_config(**cfg))
    for s in stream[:4]:
        part.update(*s)
    part.save(tmp_path / "m.bin")
    resumed = ErrorMemory.load(tmp_path / "m.bin")
    for s, want in zip(stream[4:], expected[4:]):
        got = resumed.update(*s)
        np.testing.assert_array_equal(got.cluster_size, want.cluster_size)
        assert got.stats["evicted_prompts"] == want.stats["evicted_prompts"]
    assert resumed.keys() == full.keys()


# ---------------------------------------------------------------------------------------------- the file on disk
def test_save_removes_stale_temp_files_and_uses_the_umask(tmp_path):
    memory = ErrorMemory(_config())
    memory.update(["a"], np.ones((1, 6)), [0])
    for name in (".meds_memory.dead1.tmp", ".meds_memory.abc123.tmp"):
        (tmp_path / name).write_bytes(b"x" * 100)
    (tmp_path / "keep.tmp").write_bytes(b"y")
    old = os.umask(0o027)
    try:
        memory.save(tmp_path / "m.bin")
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp", "m.bin"]
    assert (os.stat(tmp_path / "m.bin").st_mode & 0o777) == 0o640


def test_save_through_a_symlink_writes_the_target_and_keeps_the_link(tmp_path):
    memory = ErrorMemory(_config())
    memory.update(["a"], np.ones((1, 6)), [0])
    (tmp_path / "store").mkdir()
    target = tmp_path / "store" / "real.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    memory.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert ErrorMemory.load(target).num_rows == 1
    assert sorted(os.listdir(tmp_path)) == ["link.bin", "store"]
