"""`meds demo`: end to end in its quick configuration, plus the metric functions, the shuffled control and the exact
evaluation against independent computations."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")
torch = pytest.importorskip("torch")

from meds_core.demo import run_metrics as M  # noqa: E402
from meds_core.demo.controls import shuffle_within_groups  # noqa: E402
from meds_core.demo.exact_eval import completion_probs, exact_metrics  # noqa: E402
from meds_core.demo.summary import paired  # noqa: E402
from meds_core.demo.task import (  # noqa: E402
    build_model,
    build_tokenizer,
    completion_text,
    make_task,
    parse_answer,
    partial_credit,
    prompt_text,
)
from meds_core.demo.warmstart import answer_mixtures, warm_start  # noqa: E402


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    import contextlib
    import io

    from meds_core.cli import main

    out = str(tmp_path_factory.mktemp("demo") / "demo_out")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        assert main(["demo", "--quick", "-q", "--out", out]) == 0
    with open(out + ".printed.txt", "w") as f:  # beside the folder: what the command printed
        f.write(printed.getvalue())
    return out


def test_one_seed_prints_values_without_sd_and_no_library_warnings(demo_out):
    printed = open(demo_out + ".printed.txt").read()
    assert "metric (1 seed, value)" in printed and "±" not in printed
    assert "FutureWarning" not in printed and "gradient_checkpointing" not in printed


def test_metrics_record_versions_and_machine(demo_out):
    from importlib.metadata import version

    import trl

    env = json.load(open(os.path.join(demo_out, "metrics.json")))["environment"]
    assert env["versions"]["trl"] == trl.__version__ and env["versions"]["torch"] == version("torch")
    assert env["versions"]["meds_core"] == version("meds_core") and env["cpus"] == os.cpu_count()
    assert len(env["loadavg_start"].split()) == 3 or env["loadavg_start"] == "unknown"


def test_report_md_prints_the_table_of_a_metrics_file(demo_out, capsys):
    from meds_core.cli import main
    from meds_core.demo.report import readme_table
    from meds_core.demo.summary import METRICS

    assert main(["demo", "--report-md", os.path.join(demo_out, "metrics.json")]) == 0
    table = capsys.readouterr().out.strip()
    assert table == readme_table(os.path.join(demo_out, "metrics.json"))
    m = json.load(open(os.path.join(demo_out, "metrics.json")))
    rows = [r for r in table.splitlines() if r.startswith("| ") and "---" not in r]
    assert rows[0] == "| metric (1 seed, value) | baseline | MEDS | shuffled control |"
    assert len(rows) == 1 + len(METRICS)
    acc = m["aggregate"]["meds"]["acc_final"]["mean"]
    assert rows[1] == f"| {METRICS[0].label} | " + " | ".join(
        f"{m['aggregate'][k]['acc_final']['mean']:.3f}" for k in ("baseline", "meds", "shuffle")) + " |"
    assert f"{acc:.3f}" in rows[1] and "Claimed (MEDS beats the shuffled control" in table and "nothing." in table


def test_demo_writes_outputs(demo_out):
    names = set(os.listdir(demo_out))
    assert {"metrics.json", "samples.json", "steps.tsv", "curves.png", "summary.png"} <= names
    for png in ("curves.png", "summary.png"):
        with open(os.path.join(demo_out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    m = json.load(open(os.path.join(demo_out, "metrics.json")))
    assert {"config", "warm_start", "runs", "aggregate", "comparisons", "claims", "same_start", "seconds"} <= set(m)
    assert sorted(r["method"] for r in m["runs"]) == ["baseline", "meds", "shuffle"]
    for method in ("baseline", "meds", "shuffle"):
        assert {"acc_final", "rep_rate", "top_wrong", "entropy", "distinct", "penalty", "step_s"} <= set(
            m["aggregate"][method])
    steps = m["config"]["steps"]
    for r in m["runs"]:
        assert [e["step"] for e in r["steps"]] == list(range(1, steps + 1))
        assert all("reward" in e for e in r["steps"])
        assert r["evals"][0]["step"] == 0 and r["evals"][-1]["step"] == steps
    meds = next(r for r in m["runs"] if r["method"] == "meds")
    assert meds["steps"][-1]["meds/memory_rows"] > 0  # the adapter really ran: memory grew, penalties appeared
    assert meds["summary"]["penalty"] > 0
    assert next(r for r in m["runs"] if r["method"] == "baseline")["summary"]["penalty"] == 0
    assert m["claims"] == []  # one seed: nothing may be claimed


def test_demo_methods_start_identically(demo_out):
    """Same warm start and seed: identical step-0 evaluation, and identical samples (checked here from
    samples.json) up to and including the step of MEDS's first non-zero penalty."""
    m = json.load(open(os.path.join(demo_out, "metrics.json")))
    samples = {s["method"]: s for s in json.load(open(os.path.join(demo_out, "samples.json")))}
    runs = {r["method"]: r for r in m["runs"]}
    assert runs["baseline"]["evals"][0] == runs["meds"]["evals"][0] == runs["shuffle"]["evals"][0]
    first = next(e["step"] for e in runs["meds"]["steps"] if e["meds/penalized_frac"] > 0)
    assert m["same_start"][0]["first_penalty_step"] == first

    def upto(s):
        return [(st, p, a) for st, p, a in zip(s["step"], s["prompt_id"], s["answer"]) if st <= first]

    assert len(upto(samples["baseline"])) == first * m["config"]["batch"]
    assert upto(samples["baseline"]) == upto(samples["meds"]) == upto(samples["shuffle"])
    assert m["same_start"][0]["samples_identical_until_first_penalty"]


def test_cli_import_stays_light():
    code = ("import sys, meds_core.cli as c; c.build_parser()[0].parse_args(['demo', '--quick']); "
            "print(sorted(m for m in ('torch', 'trl', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_arguments_are_named():
    from meds_core.demo.pipeline import run_demo
    from meds_core.demo.runs import RunSettings

    with pytest.raises(ValueError, match="batch=30 must be a positive multiple of num_generations=8"):
        RunSettings(batch=30)
    with pytest.raises(ValueError, match="seeds=0 must be an integer >= 1"):
        run_demo(seeds=0)


# ------------------------------------------------------------------------------------------------ task
def test_task_format_reward_and_answer_location():
    from meds_core import locate_answers

    task = make_task()
    assert len(task.train) == 16 and len(task.held) == 8 and len(set(task.pairs)) == 24
    tok = build_tokenizer(task)
    ids = tok(completion_text(57))["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "\\boxed{ 57 }"
    assert len(tok(prompt_text(3, 4))["input_ids"]) == 4
    starts, targets = locate_answers(tok, [ids, ids[:1]])
    assert starts.tolist() == [1, -1] and targets[0] == tok.convert_tokens_to_ids("57")
    assert parse_answer("\\boxed{ 7 }") == 7 and parse_answer("\\boxed{ 7 } 3") is None
    assert [partial_credit(a, 7) for a in (7, 6, 8, 9, None)] == [1.0, 0.5, 0.5, 0.0, 0.0]


def test_mixtures_are_distributions_with_unequal_error_modes():
    task = make_task()
    mix = answer_mixtures(task)
    np.testing.assert_allclose(mix.sum(1), 1.0)
    c = np.asarray([a + b for a, b in task.pairs])
    p_c = mix[np.arange(len(c)), c]
    assert ((p_c > 0.02) & (p_c < 0.09)).all()
    top3 = np.sort(mix, 1)[:, ::-1][:, :3]
    assert (top3[:, 0] > top3[:, 2]).all()  # error modes of unequal frequency


# ------------------------------------------------------------------------------------------------ metrics
def test_repeated_wrong_answer_rate_hand_computed():
    steps = [1, 1, 2, 2, 3, 3]
    prompts = [0, 0, 0, 0, 0, 1]
    answers = ["a", "a", "a", "b", "b", "a"]
    wrong = [True, True, True, True, True, True]
    # step 1: a, a (same step: not earlier) -> 0/2; step 2: a repeats, b new -> 1/2; step 3: b repeats, prompt 1's
    # a is new (other prompt) -> 1/2
    assert M.repeated_wrong_answer_rate(steps, prompts, answers, wrong) == pytest.approx(2 / 6)
    assert M.repeated_wrong_answer_rate(steps, prompts, answers, wrong, from_step=2) == pytest.approx(2 / 4)
    # a correct sample is neither counted nor remembered
    assert M.repeated_wrong_answer_rate([1, 2], [0, 0], ["a", "a"], [False, True]) == 0.0
    assert math.isnan(M.repeated_wrong_answer_rate([1], [0], ["a"], [False]))


def test_top_wrong_distinct_and_group_entropy_hand_computed():
    prompts = [0, 0, 0, 0, 1]
    answers = ["a", "a", "b", "c", "d"]
    wrong = [True, True, True, False, True]
    assert M.top_wrong_share(prompts, answers, wrong) == pytest.approx((2 / 3 + 1) / 2)
    assert M.distinct_wrong(prompts, answers, wrong) == pytest.approx((2 + 1) / 2)
    assert M.group_entropy([0, 0, 0, 0, 1, 1], ["a", "a", "b", "b", "c", "c"]) == pytest.approx(math.log(2) / 2)
    np.testing.assert_allclose(M.entropy(np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])), [math.log(2), 0.0])


def test_exact_metrics_hand_computed():
    number_ids = np.arange(100) + 7  # token id of number n is n + 7, vocabulary of 107
    answer = np.zeros((2, 107))
    answer[0, [7 + 3, 7 + 4, 7 + 5]] = [0.5, 0.3, 0.2]  # prompt 0: correct 3
    answer[1, [7 + 9, 0]] = [0.5, 0.5]  # prompt 1: correct 8, all wrong mass on 9 (token 0 is no number)
    full = np.zeros((2, 100))
    full[0, 3], full[1, 8] = 0.4, 0.0
    out = exact_metrics(full, answer, number_ids, np.array([3, 8]))
    assert out["acc"] == pytest.approx(0.2)
    assert out["entropy"] == pytest.approx((-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
                                            + math.log(2)) / 2)
    assert out["top_wrong"] == pytest.approx((0.3 / 0.5 + 1.0) / 2)


def test_paired_claims_need_every_seed():
    a = [{"acc_final": 0.3, "acc_auc": 0.2, "rep_rate": 0.5, "rep_late": 0.5, "top_wrong": 0.5,
          "top_wrong_exact": 0.5, "entropy": 1.0, "distinct": 3.0}] * 3
    b = [dict(a[0], acc_final=0.2, top_wrong=0.6), dict(a[0], acc_final=0.21, top_wrong=0.4),
         dict(a[0], acc_final=0.25, top_wrong=0.6)]
    out = paired(a, b)
    assert out["acc_final"]["wins"] == 3 and out["acc_final"]["claimed"]
    assert out["acc_final"]["delta"] == pytest.approx((0.1 + 0.09 + 0.05) / 3)
    assert out["top_wrong"]["wins"] == 2 and not out["top_wrong"]["claimed"]  # lower is better; 2/3 is not enough
    assert not out["entropy"]["claimed"]  # ties never count as wins
    assert "acc_auc" not in out  # context-only metrics are never compared for claims
    assert not paired(a[:1], b[:1])["acc_final"]["claimed"]  # one seed: never claimed
    # every seed better but a tiny, noisy difference: |t| < 2 is not claimed
    noisy = [dict(a[0], distinct=3.0 + d) for d in (0.01, 0.5, 0.01)]
    assert paired(noisy, a)["distinct"]["wins"] == 3 and not paired(noisy, a)["distinct"]["claimed"]
    # 6 seeds: 5 of 6 better (>= 80 %) is enough, but not when the mean goes the other way
    six_b = [a[0]] * 6
    mostly = [dict(a[0], entropy=1.0 + d) for d in (0.1, 0.12, 0.11, 0.09, 0.1, -0.01)]
    assert paired(mostly, six_b)["entropy"]["claimed"]
    against = [dict(a[0], entropy=1.0 + d) for d in (0.01, 0.01, 0.01, 0.01, 0.01, -0.2)]
    assert not paired(against, six_b)["entropy"]["claimed"]


# ------------------------------------------------------------------------------------------------ shuffled control
def test_shuffle_permutes_only_among_each_groups_wrong_completions():
    rng = np.random.default_rng(0)
    n = 64
    group_ids = np.repeat(np.arange(8), 8)
    moved = False
    for trial in range(20):
        sizes = rng.integers(0, 20, n)
        correct = rng.choice(np.array([-1, 0, 0, 0, 1], dtype=np.int8), n)
        out = shuffle_within_groups(sizes, correct, group_ids, np.random.default_rng(trial))
        assert out.dtype == np.int64 and out.shape == (n,)
        keep = correct != 0
        np.testing.assert_array_equal(out[keep], sizes[keep])  # correct and unknown rows untouched
        for g in range(8):
            w = (group_ids == g) & (correct == 0)
            assert sorted(out[w]) == sorted(sizes[w])  # a permutation within the group's wrong rows
        moved |= bool((out != sizes).any())
    assert moved


def test_shuffled_trainer_hook_is_seeded_and_uses_the_permutation():
    from meds_core.demo.runs import _trainer_class

    cls = _trainer_class("shuffle")
    sizes = np.arange(16, dtype=np.int64)
    correct = np.array([0] * 7 + [1] + [0] * 8, dtype=np.int8)
    groups = np.repeat(np.arange(2), 8)
    a = cls.meds_cluster_sizes(SimpleNamespace(args=SimpleNamespace(seed=3)), sizes, correct, groups)
    b = cls.meds_cluster_sizes(SimpleNamespace(args=SimpleNamespace(seed=3)), sizes, correct, groups)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, shuffle_within_groups(sizes, correct, groups, np.random.default_rng(3)))
    assert a[7] == 7 and sorted(a[:8]) == list(range(8)) and sorted(a[8:]) == list(range(8, 16))


# ------------------------------------------------------------------------------------------------ exact evaluation
@pytest.fixture(scope="module")
def warm_model():
    torch.manual_seed(0)
    task = make_task()
    tok = build_tokenizer(task)
    model = build_model(tok)
    warm_start(model, tok, task, answer_mixtures(task), steps=80)
    return task, tok, model


def test_exact_probabilities_equal_unbatched_brute_force(warm_model):
    task, tok, model = warm_model
    pairs = task.pairs[:3]
    full, answer = completion_probs(model, tok, pairs)
    assert full.shape == (3, 100) and answer.shape == (3, len(tok))
    np.testing.assert_allclose(answer.sum(1), 1.0, atol=1e-9)
    assert (full.sum(1) <= 1 + 1e-9).all()
    model.eval()
    for i, (a, b) in enumerate(pairs):
        for n in np.argsort(full[i])[::-1][:3].tolist() + [a + b]:
            ids = tok(prompt_text(a, b))["input_ids"] + tok(completion_text(n))["input_ids"] + [tok.eos_token_id]
            logp = 0.0
            for t in range(4, len(ids)):  # one sequence, one position at a time, float64 softmax
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
                logp += float(torch.log_softmax(logits, -1)[ids[t]])
            assert full[i, n] == pytest.approx(math.exp(logp), rel=1e-4, abs=1e-9)


def test_exact_probabilities_match_sampling(warm_model):
    task, tok, model = warm_model
    a, b = task.train[0]
    full, _ = completion_probs(model, tok, [(a, b)])
    n_samples = 4000
    prompt = torch.tensor([tok(prompt_text(a, b))["input_ids"]] * n_samples)
    torch.manual_seed(1)
    with torch.no_grad():
        gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
    eos = tok.eos_token_id
    counts = np.zeros(100)
    for row in gen[:, prompt.shape[1]:].tolist():
        row = row[: row.index(eos) + 1] if eos in row else row
        if row and row[-1] == eos:
            n = parse_answer(tok.decode(row[:-1]))
            if n is not None and tok(completion_text(n))["input_ids"] == row[:-1]:
                counts[n] += 1
    freq = counts / n_samples
    sd = np.sqrt(full[0] * (1 - full[0]) / n_samples)
    assert (np.abs(freq - full[0]) <= 4.5 * sd + 2e-3).all(), np.abs(freq - full[0]).max()
    assert abs(freq.sum() - full[0].sum()) < 0.03
