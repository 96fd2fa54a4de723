"""TRL compatibility harness: TRL's own GRPO tests, run with the stock ``GRPOTrainer`` and with ``MEDSGRPOTrainer``.

How TRL's tests are obtained
    The trl sdist and wheel ship no tests, and this project never copies them. The script downloads
    ``tests/test_grpo_trainer.py`` and the modules it needs (``tests/__init__.py``, ``tests/conftest.py``,
    ``tests/testing_utils.py``) from TRL's public GitHub repository at the pinned commit :data:`TRL_COMMIT`
    (``https://raw.githubusercontent.com/huggingface/trl/<commit>/tests/<file>``) into
    ``~/.cache/meds_core/trl_tests/<commit>/tests/``, outside the repository, and reuses that copy afterwards.
    ``--tests-dir PATH`` uses an already-downloaded ``tests/`` folder instead (offline), e.g. one written by
    ``git -C <trl clone> show <commit>:tests/test_grpo_trainer.py``.

    The commit: the project pins ``trl>=1.16,<1.17``, so the right test file is the one at the ``v1.16.0`` tag. The
    newest snapshot of huggingface/trl reachable when this harness was written ends at
    ``f2cd57710ae345ea6428ae95363267fcf38a3dc8`` (main, 2026-07-24, ``VERSION`` 1.10.0.dev0; tags up to v1.9.0) and
    holds no v1.16.0 tag, so that commit, the newest one available, is pinned. Its tests are older than trl 1.16 in
    places, so a few fail for both trainers; they are not MEDS's concern, since both columns show them. Where the
    v1.16.0 tag can be read, pass ``--commit v1.16.0`` (any ref raw.githubusercontent.com accepts) or update
    :data:`TRL_COMMIT`.

Offline stand-ins for the Hub
    ``tests/trl_standins.py`` builds tiny random Qwen2 / Qwen3 / Qwen3-MoE models, a Qwen-id-compatible tokenizer
    with TRL's own Qwen chat templates, and the ``trl-internal-testing/zen`` prompt-only datasets into a folder laid
    out as ``<org>/<name>/`` (``~/.cache/meds_core/trl_standins`` by default). pytest runs with that folder as its
    working directory and ``HF_HUB_OFFLINE=1``: ``from_pretrained`` and ``load_dataset`` take an existing local
    directory named like the hub id before asking the Hub, so the tests' ids resolve to the stand-ins without any
    patching. Tests that load a model with no stand-in (other architectures, vision models) fail the same way for
    both trainers and are listed in :data:`NOT_RUN` instead of being run.

The two runs
    Each run is one ``pytest`` process with the plugin ``benchmarks/_trl_compat_plugin.py``. In the MEDS run the
    plugin rebinds ``GRPOTrainer`` in the test module to a ``MEDSGRPOTrainer`` subclass whose only change is the
    default ``meds_config``: answer marker ``" x"`` (the prefix of the stand-in tokenizer's filler words, so random
    completions carry it and MEDS really reads features and shapes) and ``use_last_n_layers=2`` (the stand-ins
    have 2 layers). The plugin counts, per test, the rollouts MEDS scored and those with a non-zero penalty.

Verdicts
    Every test that passes stock must pass with MEDS, or be listed in :data:`DELIBERATE_DIFFERENCES` (with its
    reason) or :data:`PENDING` (a known adapter bug being fixed elsewhere). Anything else is a regression and the
    script exits 1.

CI
    CI has no GitHub access, so it cannot fetch TRL's tests. ``tests/test_trl_compat.py`` instead states, in our
    own words and code, the behaviours of the cheapest training tests of the selection (reward models and
    functions, conversational prompts, ``num_iterations``, ``steps_per_generation``, ``scale_rewards``,
    ``loss_type``, ``mask_truncated_completions``, log metrics), and runs each stock and with MEDS side by side on
    the same stand-ins; this script is the full check.

    python benchmarks/trl_compat.py --tests-dir /path/to/trl/tests     # offline copy
    python benchmarks/trl_compat.py                                     # downloads at the pinned commit
    python benchmarks/trl_compat.py -k "environment or iterations"      # a sub-selection
Writes benchmarks/results/trl_compat.md (table, versions, machine, load) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRL_COMMIT = "f2cd57710ae345ea6428ae95363267fcf38a3dc8"
TEST_FILES = ("__init__.py", "conftest.py", "testing_utils.py", "test_grpo_trainer.py")
RAW_URL = "https://raw.githubusercontent.com/huggingface/trl/{commit}/tests/{name}"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "meds_core")
MODULE = "test_grpo_trainer.py"
# The CPU selection (default): all unit / construction tests of the two small classes, and the GRPOTrainer tests
# of the TRL features users combine with MEDS. --all runs every test of CLASSES (hours on a shared CPU).
# TestGRPOTrainerVLM needs vision models and TestGRPOTrainerSlow an accelerator; neither has stand-ins here.
CLASSES = ("TestGetHighEntropyMask", "TestGRPORolloutDispatch", "TestGRPOTrainer")
SELECTION = (
    "TestGetHighEntropyMask", "TestGRPORolloutDispatch",
    *(f"TestGRPOTrainer::{t}" for t in (
        "test_init_minimal", "test_train", "test_train_dataset_format", "test_train_multiple_iterations",
        "test_train_peft_config", "test_train_reward_func_standard", "test_train_sync_and_async_reward_funcs",
        "test_train_multiple_reward_funcs_with_None_output", "test_train_multiple_reward_funcs_with_weights",
        "test_train_normalize_then_sum_aggregation", "test_train_scale_rewards",
        "test_train_with_mask_truncated_completions", "test_train_loss_types", "test_train_with_tools",
        "test_train_with_environment_factory", "test_train_with_environment_owned_reward",
        "test_train_reward_func_additional_column", "test_get_off_policy_mask", "test_no_reward_source_raises",
        "test_dataset_required_without_environment", "test_mismatched_reward_processing_classes_length",
    )),
)
_NO_STANDIN = "loads {} (no offline stand-in: only Qwen2 / Qwen3 / Qwen3-MoE text models are built)"
# Tests of the selected classes that are not run (substring of the test id -> reason).
NOT_RUN = {
    "test_train[trl-internal-testing/tiny-Cohere2ForCausalLM]": _NO_STANDIN.format("tiny-Cohere2ForCausalLM"),
    "test_train[trl-internal-testing/tiny-Glm4MoeForCausalLM]": _NO_STANDIN.format("tiny-Glm4MoeForCausalLM"),
    "test_train[trl-internal-testing/tiny-GptOssForCausalLM]": _NO_STANDIN.format("tiny-GptOssForCausalLM"),
    "test_train[trl-internal-testing/tiny-NemotronHForCausalLM-nano]":
        _NO_STANDIN.format("tiny-NemotronHForCausalLM-nano"),
    "test_trust_remote_code": _NO_STANDIN.format("tiny-RemoteForCausalLM (remote code)"),
    "test_train_different_reward_model": _NO_STANDIN.format("tiny-LlamaForSequenceClassification-3.2"),
    "test_train_with_cast_lm_head_to_fp32": _NO_STANDIN.format("Gemma / Llama models"),
}
# Tests that pass stock and fail with MEDS on purpose (substring of the test id -> reason).
DELIBERATE_DIFFERENCES: dict[str, str] = {}
# Known adapter bugs being fixed on another branch (substring of the test id -> what is pending).
PENDING: dict[str, str] = {}


def fetch_tests(commit: str, cache: str) -> str:
    """Download TRL's test files at ``commit`` into ``<cache>/trl_tests/<commit>/tests`` (once); returns that dir."""
    folder = os.path.join(cache, "trl_tests", commit, "tests")
    missing = [n for n in TEST_FILES if not os.path.exists(os.path.join(folder, n))]
    if not missing:
        return folder
    os.makedirs(folder, exist_ok=True)
    for name in missing:
        url = RAW_URL.format(commit=commit, name=name)
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                data = r.read()
        except OSError as e:
            raise SystemExit(f"trl_compat: cannot download {url} ({e}); without internet access pass --tests-dir "
                             f"with TRL's tests/ folder at commit {commit} (git show {commit}:tests/{name}).") from e
        with open(os.path.join(folder, name + ".part"), "wb") as f:
            f.write(data)
        os.replace(os.path.join(folder, name + ".part"), os.path.join(folder, name))
    return folder


def check_tests_dir(path: str) -> str:
    path = os.path.abspath(path)
    missing = [n for n in TEST_FILES if not os.path.exists(os.path.join(path, n))]
    if missing:
        raise SystemExit(f"trl_compat: --tests-dir {path} lacks {', '.join(missing)}; it must be TRL's tests/ folder "
                         f"(at least {', '.join(TEST_FILES)}).")
    return path


def run_pytest(mode: str, tests_dir: str, mirror: str, ids: list[str], keyword: str | None,
               timeout: int) -> tuple[dict, float]:
    """One pytest process over ``ids`` with the plugin in ``mode``; returns (results by test id, seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        # One thread per process: on a shared, oversubscribed CPU, torch's thread pool only adds contention.
        env = dict(os.environ, MEDS_TRL_COMPAT_MODE=mode, MEDS_TRL_COMPAT_REPORT=report, HF_HUB_OFFLINE="1",
                   HF_DATASETS_CACHE=os.path.join(mirror, ".datasets_cache"), TOKENIZERS_PARALLELISM="false",
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   PYTHONPATH=os.pathsep.join(p for p in (HERE, ROOT, os.environ.get("PYTHONPATH")) if p))
        module = f"{os.path.basename(tests_dir)}/{MODULE}"
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "_trl_compat_plugin", "-q",
               "--rootdir", os.path.dirname(tests_dir), "-c", os.devnull, "-W", "ignore::DeprecationWarning",
               *[os.path.join(tests_dir, MODULE) + "::" + i for i in ids]]
        cmd += [f"--deselect={module}::TestGRPOTrainer::{k}" for k in NOT_RUN]  # prefix match on the test id
        if keyword:
            cmd += ["-k", keyword]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=mirror, env=env, timeout=timeout, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if not os.path.exists(report):
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"trl_compat: the {mode} pytest run wrote no report (exit {proc.returncode}).")
        with open(report, encoding="utf-8") as f:
            return json.load(f)["results"], seconds


def _short(nodeid: str) -> str:
    return nodeid.split("::", 1)[1] if "::" in nodeid else nodeid


def _listed(table: dict[str, str], test: str) -> str | None:
    return next((why for key, why in table.items() if key in test), None)


def verdicts(stock: dict, meds: dict) -> list[dict]:
    rows = []
    for nodeid in sorted(set(stock) | set(meds), key=lambda n: (list(stock).index(n) if n in stock else 10**6, n)):
        s = stock.get(nodeid, {}).get("outcome", "missing")
        m = meds.get(nodeid, {}).get("outcome", "missing")
        test = _short(nodeid)
        if s == m:
            verdict = "same"
        elif s != "pass":
            verdict = "differs (not a stock pass)"
        elif (why := _listed(DELIBERATE_DIFFERENCES, test)) is not None:
            verdict = f"deliberate: {why}"
        elif (why := _listed(PENDING, test)) is not None:
            verdict = why
        else:
            verdict = "REGRESSION"
        rows.append({"test": test, "stock": s, "meds": m, "verdict": verdict,
                     "stock_reason": stock.get(nodeid, {}).get("reason", "") if s != "pass" else "",
                     "meds_reason": meds.get(nodeid, {}).get("reason", "") if m not in ("pass", s) else "",
                     "penalised": meds.get(nodeid, {}).get("meds_penalised"),
                     "scored": meds.get(nodeid, {}).get("meds_rollouts")})
    return rows


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def table(rows: list[dict]) -> str:
    out = ["| test | stock | MEDS | MEDS penalised / scored | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        pen = "" if r["scored"] is None else f"{r['penalised']} / {r['scored']}"
        s_why = f" ({_cell(r['stock_reason'])})" if r["stock_reason"] else ""
        m_why = f" ({_cell(r['meds_reason'])})" if r["meds_reason"] else ""
        out.append(f"| `{r['test']}` | {r['stock']}{s_why} | {r['meds']}{m_why} | {pen} | {r['verdict']} |")
    return "\n".join(out)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("trl", "transformers", "torch", "accelerate", "datasets", "peft")}


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def report_md(rows, seconds, commit, source, load_before, load_after, keyword, all_tests) -> str:
    count = {}
    for r in rows:
        count[(r["stock"], r["meds"])] = count.get((r["stock"], r["meds"]), 0) + 1
    shaped = [r for r in rows if r["penalised"]]
    scored = [r for r in rows if r["scored"]]
    regress = [r for r in rows if r["verdict"] == "REGRESSION"]
    stock_pass = [r for r in rows if r["stock"] == "pass"]
    v = _versions()
    lines = [
        "# TRL compatibility: TRL's own GRPO tests, stock `GRPOTrainer` vs `MEDSGRPOTrainer`",
        "",
        f"Recorded by `python benchmarks/trl_compat.py{' --all' if all_tests else ''}"
        f"{' -k ' + repr(keyword) if keyword else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- TRL tests: `tests/{MODULE}` of huggingface/trl at commit `{commit}` ({source}); see the script's "
        "docstring for how the commit was chosen.",
        "- " + ", ".join(f"{k} {val}" for k, val in v.items()) + f", Python {platform.python_version()}",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or platform.platform()}), "
        f"no accelerator used; loadavg before {load_before}, after {load_after} (shared machine).",
        f"- Wall time: stock run {seconds['stock']:.0f} s, MEDS run {seconds['meds']:.0f} s.",
        f"- Selection: {'every test of ' + ', '.join(CLASSES) if all_tests else 'the CPU selection (SELECTION)'}"
        f"{', -k ' + repr(keyword) if keyword else ''}: {len(rows)} tests; tests not run are listed below.",
        f"- Stock passes: {len(stock_pass)}; MEDS passes of those: "
        f"{sum(r['meds'] == 'pass' for r in stock_pass)}; regressions (not listed as deliberate or pending): "
        f"{len(regress)}.",
        f"- MEDS shaped for real: {len(shaped)} of the {len(scored)} tests where MEDS scored rollouts had non-zero "
        f"penalties ({sum(r['penalised'] for r in shaped)} of {sum(r['scored'] for r in scored)} rollouts).",
        "- Outcome pairs (stock, MEDS): " + ", ".join(f"{a}/{b}: {n}" for (a, b), n in sorted(count.items())),
        "",
        table(rows),
        "",
        "Not run (no offline stand-in):",
        "",
        *[f"- `{k}`: {why}" for k, why in NOT_RUN.items()],
        "",
        "Deliberate differences: " + ("none." if not DELIBERATE_DIFFERENCES else ""),
        *[f"- `{k}`: {why}" for k, why in DELIBERATE_DIFFERENCES.items()],
        "",
        "Pending:",
        *[f"- `{k}`: {why}" for k, why in PENDING.items()],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--tests-dir", help="TRL's tests/ folder already on disk (offline); default: download it")
    ap.add_argument("--commit", default=TRL_COMMIT, help="huggingface/trl commit or tag to download the tests at")
    ap.add_argument("--cache", default=CACHE, help="where downloads and stand-ins are cached (outside the repo)")
    ap.add_argument("--all", action="store_true", help="every test of the selected classes, not the CPU selection")
    ap.add_argument("-k", dest="keyword", help="pytest -k expression narrowing the selection")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per pytest run")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "trl_compat.md"))
    args = ap.parse_args(argv)

    if args.tests_dir:
        tests_dir, source = check_tests_dir(args.tests_dir), "read from --tests-dir"
    else:
        tests_dir, source = fetch_tests(args.commit, args.cache), "downloaded from GitHub"
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from trl_standins import build_mirror

    mirror = build_mirror(os.path.join(args.cache, "trl_standins"))
    load_before = _loadavg()
    results, seconds = {}, {}
    for mode in ("stock", "meds"):
        results[mode], seconds[mode] = run_pytest(mode, tests_dir, mirror, list(CLASSES if args.all else SELECTION),
                                                  args.keyword, args.timeout)
        print(f"{mode}: {len(results[mode])} tests in {seconds[mode]:.0f} s", flush=True)
    rows = verdicts(results["stock"], results["meds"])
    md = report_md(rows, seconds, args.commit, source, load_before, _loadavg(), args.keyword, args.all)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(md)
    print(md)
    return 1 if any(r["verdict"] == "REGRESSION" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
