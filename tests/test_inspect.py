"""`meds inspect`: summary numbers equal those computed from the memory directly; the plots are valid PNGs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from meds_core import ErrorMemory, MEDSConfig, penalties
from meds_core.cli import main
from meds_core.inspection.memory_report import inspect_memory, stored_wrong_penalties, summarize_memory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def build_memory(noise_policy: str = "pool") -> ErrorMemory:
    """3 prompts (int keys) x 10 rollouts per step, features around 3 centres per prompt plus outliers."""
    rng = np.random.default_rng(1)
    mem = ErrorMemory(MEDSConfig(use_last_n_layers=4, penalty_coef=0.25, noise_policy=noise_policy))
    centres = rng.standard_normal((3, 3, 4)) * 3
    for _ in range(5):
        pick = rng.integers(0, 3, size=30)
        feats = centres[np.arange(30) // 10, pick] + 0.01 * rng.standard_normal((30, 4))
        out = rng.random(30) < 0.2
        feats[out] = rng.standard_normal((int(out.sum()), 4)) * 10
        mem.update(np.repeat([10, 11, 12], 10), feats, (pick == 0).astype(int))
    return mem


@pytest.fixture(scope="module")
def memory_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mem") / "meds_memory.bin"
    build_memory().save(path)
    return path


def direct_numbers(mem: ErrorMemory) -> dict:
    """The summary's numbers from rows()/labels() with plain loops."""
    d = {"memories": {0: 0, 1: 0}, "rows": {0: 0, 1: 0}, "clusters": {0: 0, 1: 0}, "noise": {0: 0, 1: 0},
         "repeated": 0, "per_key": {}, "pen_sizes": []}
    for key, group in mem.keys():
        labels = mem.labels(key, group).tolist()
        assert len(labels) == len(mem.rows(key, group))
        clusters = {lab for lab in labels if lab >= 0}
        in_clusters = sum(lab >= 0 for lab in labels)
        d["memories"][group] += 1
        d["rows"][group] += len(labels)
        d["clusters"][group] += len(clusters)
        d["noise"][group] += labels.count(-1)
        if group == 0:
            d["repeated"] += in_clusters - len(clusters)
            d["per_key"][key] = (len(labels), len(clusters), labels.count(-1), in_clusters - len(clusters))
            d["pen_sizes"] += [labels.count(lab) if (lab >= 0 or mem.config.noise_policy == "pool") else 0
                               for lab in labels]
    return d


def test_summary_equals_direct_computation(memory_file):
    mem = ErrorMemory.load(memory_file)
    s = summarize_memory(mem, top=2)
    d = direct_numbers(mem)
    for name, g in (("wrong", 0), ("correct", 1)):
        assert s["memories"][name] == d["memories"][g]
        assert s["rows"][name] == d["rows"][g]
        assert s["clusters"][name] == d["clusters"][g]
        assert s["noise_rows"][name] == d["noise"][g]
        assert math.isclose(s["noise_share"][name], d["noise"][g] / d["rows"][g])
        assert math.isclose(s["clusters_per_memory"][name], d["clusters"][g] / d["memories"][g])
    assert s["rows"]["all"] == mem.num_rows and s["memories"]["all"] == len(mem) == 6
    assert s["repeated_errors"] == d["repeated"] > 0
    assert math.isclose(s["repeated_error_rate"], d["repeated"] / d["rows"][0])
    want_pen = penalties(np.array(d["pen_sizes"]), np.zeros(len(d["pen_sizes"])), penalty_coef=0.25, cap=2.0)
    np.testing.assert_allclose(stored_wrong_penalties(mem), want_pen)
    assert math.isclose(s["penalty"]["mean"], want_pen.mean()) and math.isclose(s["penalty"]["max"], want_pen.max())
    ranked = sorted(d["per_key"].items(), key=lambda kv: (-kv[1][3], -kv[1][0]))[:2]
    assert [(r["key"], (r["wrong_rows"], r["clusters"], r["noise"], r["repeated"])) for r in s["top_prompts"]] == ranked
    sizes = sum((list(v.items()) for v in s["cluster_sizes"].values()), [])
    assert sum(int(size) * count for size, count in sizes) == sum(d["rows"].values()) - sum(d["noise"].values())


def test_noise_policy_ignore_gives_noise_rows_no_penalty():
    mem = build_memory("ignore")
    d = direct_numbers(mem)
    pen = stored_wrong_penalties(mem)
    assert (pen == 0).sum() == d["noise"][0] > 0 and len(pen) == d["rows"][0]


def test_cli_inspect_writes_valid_pngs(memory_file, tmp_path, capsys):
    import matplotlib.image as mpimg

    out = tmp_path / "inspect_out"
    assert main(["inspect", str(memory_file), "--out", str(out), "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| repeated-error rate |" in printed and "Top prompts by repeated errors" in printed
    for name in ("heatmap.png", "cluster_sizes.png", "penalties.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"]["all"] == ErrorMemory.load(memory_file).num_rows
    assert summary["heatmap_key"] == summary["top_prompts"][0]["key"]  # default: most repeated errors
    assert (out / "summary.md").read_text().startswith("| | wrong | correct | all |")


def test_inspect_key_and_group_selection(memory_file, tmp_path):
    s = inspect_memory(memory_file, tmp_path / "k", key="11", group=1)  # a CLI string matches the int key 11
    assert s["heatmap_key"] == 11 and (tmp_path / "k" / "heatmap.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match=r"prompt key '99' has no wrong memory; stored keys include \['10'"):
        inspect_memory(memory_file, tmp_path / "k", key="99")
    s = inspect_memory(memory_file, tmp_path / "np", plots=False)
    assert set(s["files"]) == {"summary_json", "summary_md"} and not (tmp_path / "np" / "heatmap.png").exists()


def test_inspect_empty_memory(tmp_path):
    mem = ErrorMemory(MEDSConfig(use_last_n_layers=2))
    s = inspect_memory(mem, tmp_path, top=5)
    assert s["rows"]["all"] == 0 and s["repeated_error_rate"] is None and "heatmap" not in s["files"]
    assert (tmp_path / "cluster_sizes.png").read_bytes()[:8] == PNG_MAGIC


def test_python_dash_m_and_light_imports():
    out = subprocess.run([sys.executable, "-m", "meds_core", "--help"], capture_output=True, text=True, check=True)
    assert "eval" in out.stdout and "inspect" in out.stdout
    code = ("import sys, meds_core.cli, meds_core.evaluation.pass_at_k, meds_core.inspection.memory_stats; "
            "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'math_verify') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert main([]) == 2


def test_cluster_answers_names_each_clusters_most_frequent_answer():
    from meds_core.inspection.memory_report import cluster_answers

    labels = np.array([0, 1, 0, -1, 0, 1, -1])
    answers = ["7", "8", "7", "3", "9", "8", "4"]
    assert cluster_answers(labels, answers) == {0: "'7' (2/3)", 1: "'8' (2/2)", -1: "'3' (1/2)"}
    with pytest.raises(ValueError, match="answers list has 2 entries but the memory stores 7 rows"):
        cluster_answers(labels, ["7", "8"])


def test_cli_inspect_with_answers(memory_file, tmp_path, capsys):
    mem = ErrorMemory.load(memory_file)
    texts = {str(k): [f"answer {i}" for i in range(len(mem.labels(k, g)))] for k, g in mem.keys() if g == 0}
    good = tmp_path / "answers.json"
    good.write_text(json.dumps({"wrong": texts, "correct": {}}))
    assert main(["inspect", str(memory_file), "--out", str(tmp_path / "a"), "--answers", str(good)]) == 0
    assert (tmp_path / "a" / "heatmap.png").read_bytes()[:8] == PNG_MAGIC
    capsys.readouterr()
    bad = tmp_path / "short.json"
    bad.write_text(json.dumps({"wrong": {k: v[:1] for k, v in texts.items()}}))
    assert main(["inspect", str(memory_file), "--out", str(tmp_path / "b"), "--answers", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "answers list has 1 entries but the memory stores" in err[0]
    assert not (tmp_path / "b" / "heatmap.png").exists()
    assert main(["inspect", str(memory_file), "--answers", str(tmp_path / "none.json")]) == 2
    assert "--answers" in capsys.readouterr().err
