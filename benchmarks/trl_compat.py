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
    Each run is one ``pytest`` process with the plugin ``benchmarks/_trl_compat_plugin.py``; the two run side by side
    (``--sequential``: one after the other), each with one torch thread. In the MEDS run the plugin rebinds
    ``GRPOTrainer`` in the test module to a ``MEDSGRPOTrainer`` subclass whose only change is the default
    ``meds_config``: answer marker ``" "`` (a space: every filler word of the stand-in tokenizer starts with one, and
    so do the tool-call and plain-text completions that the tool and environment tests hard-code, so MEDS reads a
    feature from nearly every completion and really shapes), ``use_last_n_layers=2`` (the stand-ins have 2 layers),
    and every group shaped, both correctness groups penalised. The plugin counts, per test, the rollouts and steps
    MEDS scored and those with a non-zero penalty, and the mean raw and shaped reward over the penalised steps.
    ``--timeout`` stops a run after that many seconds; the tests it had not finished are reported as not run.

Verdicts
    Every test that passes stock must pass with MEDS, or be listed in :data:`DELIBERATE_DIFFERENCES` (with its
    reason) or :data:`PENDING` (a known adapter bug being fixed elsewhere). Anything else is a regression and the
    script exits 1.

CI
    ``tests/test_trl_compat.py`` runs :data:`CI_SELECTION` (the cheapest dozen) through :func:`run_pytest` when TRL's
    tests can be had (``MEDS_TRL_TESTS_DIR``, this script's cache, or a download), and is skipped with the reason
    when they cannot (CI reaches package registries only). Its other tests re-state, in our own code, the behaviours
    of the cheapest training tests of the selection and run each stock and with MEDS side by side on the same
    stand-ins; this script is the full check.

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
# pytest runs them in this order, so a run cut short by --timeout has done the cheap unit tests first, then the
# training tests most telling for MEDS (tool-calling environments, whose rewards TRL's test checks exactly).
CLASSES = ("TestGetHighEntropyMask", "TestGRPORolloutDispatch", "TestGRPOTrainer")
SELECTION = (
    "TestGetHighEntropyMask", "TestGRPORolloutDispatch",
    *(f"TestGRPOTrainer::{t}" for t in (
        "test_init_minimal", "test_get_off_policy_mask", "test_no_reward_source_raises",
        "test_dataset_required_without_environment", "test_mismatched_reward_processing_classes_length",
        "test_train_with_environment_owned_reward", "test_train_with_tools", "test_train_with_environment_factory",
        "test_train_multiple_iterations", "test_train_peft_config", "test_train_with_mask_truncated_completions",
        "test_train_sync_and_async_reward_funcs", "test_train_multiple_reward_funcs_with_None_output",
        "test_train_normalize_then_sum_aggregation", "test_train_reward_func_additional_column",
        "test_train_dataset_format", "test_train_multiple_reward_funcs_with_weights", "test_train_reward_func_standard",
        "test_train", "test_train_scale_rewards", "test_train_loss_types",
    )),
)
# The cheapest dozen of the selection, all passing stock, that tests/test_trl_compat.py runs with both trainers when
# TRL's tests can be had (about 1 minute for both runs side by side): the unit tests and construction checks. The
# training tests run 5 to 9 GRPO steps on Qwen's 151 936-token vocabulary: minutes per trainer on a CPU in TRL's
# default bf16, and 7 s to 15 min with --fp32 (benchmarks/results/trl_compat.md), so none is in the dozen.
CI_SELECTION = (
    "TestGetHighEntropyMask",
    "TestGRPORolloutDispatch::test_generate_rollout_func_raises_when_required_keys_are_missing",
    *(f"TestGRPOTrainer::{t}" for t in (
        "test_init_minimal", "test_get_off_policy_mask", "test_no_reward_source_raises",
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


def fetch_tests(commit: str, cache: str, timeout: float = 60) -> str:
    """Download TRL's test files at ``commit`` into ``<cache>/trl_tests/<commit>/tests`` (once); returns that dir.

    Raises SystemExit with the fix (``--tests-dir``) when a file cannot be downloaded."""
    folder = os.path.join(cache, "trl_tests", commit, "tests")
    missing = [n for n in TEST_FILES if not os.path.exists(os.path.join(folder, n))]
    if not missing:
        return folder
    os.makedirs(folder, exist_ok=True)
    for name in missing:
        url = RAW_URL.format(commit=commit, name=name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
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


def _pytest_cmd(tests_dir: str, ids: list[str], keyword: str | None) -> list[str]:
    module = f"{os.path.basename(tests_dir)}/{MODULE}"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "_trl_compat_plugin", "-q",
           "--rootdir", os.path.dirname(tests_dir), "-c", os.devnull, "-W", "ignore::DeprecationWarning",
           *[os.path.join(tests_dir, MODULE) + "::" + i for i in ids]]
    cmd += [f"--deselect={module}::TestGRPOTrainer::{k}" for k in NOT_RUN]  # prefix match on the test id
    if keyword:
        cmd += ["-k", keyword]
    return cmd


def run_pytest(modes: tuple[str, ...], tests_dir: str, mirror: str, ids: list[str], keyword: str | None,
               timeout: float, parallel: bool = True) -> tuple[dict, dict]:
    """One pytest process per mode over ``ids`` with the plugin; side by side when ``parallel``, else one after the
    other. A process still running after ``timeout`` seconds (of its own) is stopped; the tests it had finished are
    reported, the rest of its selection as ``not run (time limit)``.

    Returns:
        results by mode (test id -> outcome record) and seconds by mode.
    """
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        def start(mode):
            report = os.path.join(tmp, f"{mode}.json")
            # One thread per process: on a shared, oversubscribed CPU, torch's thread pool only adds contention.
            env = dict(os.environ, MEDS_TRL_COMPAT_MODE=mode, MEDS_TRL_COMPAT_REPORT=report, HF_HUB_OFFLINE="1",
                       HF_DATASETS_CACHE=os.path.join(mirror, f".datasets_cache_{mode}"),
                       TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                       PYTHONPATH=os.pathsep.join(p for p in (HERE, ROOT, os.environ.get("PYTHONPATH")) if p))
            log = open(os.path.join(tmp, f"{mode}.log"), "w+", encoding="utf-8")
            proc = subprocess.Popen(_pytest_cmd(tests_dir, ids, keyword), cwd=mirror, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            return {"mode": mode, "proc": proc, "log": log, "report": report, "t0": time.perf_counter()}

        def finish(run):
            proc, timed_out = run["proc"], False
            try:
                proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - run["t0"])))
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, 15)  # the pytest process and anything it started
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
            seconds[run["mode"]] = time.perf_counter() - run["t0"]
            run["log"].seek(0)
            tail = run["log"].read()[-4000:]
            run["log"].close()
            if not os.path.exists(run["report"]):
                sys.stderr.write(tail)
                raise SystemExit(f"trl_compat: the {run['mode']} pytest run wrote no report (exit "
                                 f"{proc.returncode}{', stopped at the time limit' if timed_out else ''}).")
            with open(run["report"], encoding="utf-8") as f:
                rep = json.load(f)
            res = rep["results"]
            for entry in res.values():
                if entry["outcome"] == "unfinished":
                    entry.update(outcome="not run", reason="stopped at the time limit mid-test")
            for nodeid in rep.get("collected", []):
                res.setdefault(nodeid, {"outcome": "not run", "reason": "time limit reached before it started",
                                        "seconds": 0.0})
            results[run["mode"]] = res
            print(f"{run['mode']}: {sum(e['outcome'] != 'not run' for e in res.values())} of {len(res)} tests in "
                  f"{seconds[run['mode']]:.0f} s{' (time limit)' if timed_out else ''}", flush=True)

        if parallel:
            runs = [start(m) for m in modes]
            for run in runs:
                finish(run)
        else:
            for m in modes:
                finish(start(m))
    return results, seconds


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
        if "not run" in (s, m):
            verdict = "not run (time limit)" if s == m else "incomplete (time limit)"
        elif s == m:
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
                     "seconds": (stock.get(nodeid, {}).get("seconds"), meds.get(nodeid, {}).get("seconds")),
                     **{k: meds.get(nodeid, {}).get(key) for k, key in (
                         ("penalised", "meds_penalised"), ("scored", "meds_rollouts"), ("steps", "meds_steps"),
                         ("steps_penalised", "meds_steps_penalised"), ("raw_mean", "raw_mean_penalised_steps"),
                         ("shaped_mean", "shaped_mean_penalised_steps"))}})
    return rows


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def table(rows: list[dict]) -> str:
    out = ["| test | stock | MEDS | seconds stock / MEDS | MEDS rollouts penalised / scored | MEDS steps penalised / "
           "all | reward mean raw -> shaped (penalised steps) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pen = "" if r["scored"] is None else f"{r['penalised']} / {r['scored']}"
        steps = "" if r["steps"] is None else f"{r['steps_penalised']} / {r['steps']}"
        means = "" if r["raw_mean"] is None else f"{r['raw_mean']:.3f} -> {r['shaped_mean']:.3f}"
        secs = " / ".join("-" if x is None or x == 0 else f"{x:.0f}" for x in r["seconds"])
        s_why = f" ({_cell(r['stock_reason'])})" if r["stock_reason"] else ""
        m_why = f" ({_cell(r['meds_reason'])})" if r["meds_reason"] else ""
        out.append(f"| `{r['test']}` | {r['stock']}{s_why} | {r['meds']}{m_why} | {secs} | {pen} | {steps} | "
                   f"{means} | {r['verdict']} |")
    return "\n".join(out)


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("trl", "transformers", "torch", "accelerate", "datasets", "peft")}


def _meds_settings() -> str:
    """The MEDS run's config, as the plugin sets it (read from the plugin file, not restated here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_trl_compat_plugin", os.path.join(HERE, "_trl_compat_plugin.py"))
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    return ", ".join(f"{k}={v!r}" for k, v in plugin.MEDS_SETTINGS.items())


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def report_md(rows, seconds, commit, source, load_before, load_after, keyword, all_tests, parallel=True,
              timeout=None) -> str:
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
        f"- MEDS run: `MEDSGRPOTrainer` with `MEDSConfig({_meds_settings()})`, the rest at its defaults.",
        "- Precision: " + ("`--fp32`: both runs train in float32 where a test leaves `bf16` unset (TRL's default "
                           "is bf16 mixed precision); every test of the selection leaves it unset."
                           if os.environ.get("MEDS_TRL_COMPAT_FP32") == "1" else "TRL's defaults (bf16 mixed "
                           "precision unless a test sets otherwise)."),
        f"- Wall time: stock run {seconds['stock']:.0f} s, MEDS run {seconds['meds']:.0f} s "
        f"({'side by side, one process each' if parallel else 'one after the other'}, one torch thread each"
        f"{f'; time limit {timeout:.0f} s per run' if timeout else ''}).",
        f"- Not run because of the time limit: {sum('time limit' in r['verdict'] for r in rows)} tests "
        f"({sum(r['stock'] == 'not run' for r in rows)} stock, {sum(r['meds'] == 'not run' for r in rows)} MEDS).",
        f"- Selection: {'every test of ' + ', '.join(CLASSES) if all_tests else 'the CPU selection (SELECTION)'}"
        f"{', -k ' + repr(keyword) if keyword else ''}: {len(rows)} tests; tests not run are listed below.",
        f"- Stock passes: {len(stock_pass)}; MEDS passes of those: "
        f"{sum(r['meds'] == 'pass' for r in stock_pass)}; regressions (not listed as deliberate or pending): "
        f"{len(regress)}.",
        f"- MEDS shaped for real: {len(shaped)} of the {len(scored)} tests where MEDS scored rollouts had non-zero "
        f"penalties ({sum(r['penalised'] for r in shaped)} of {sum(r['scored'] for r in scored)} rollouts). "
        "Columns: rollouts MEDS scored and those with a non-zero penalty; MEDS steps and those with a non-zero "
        "penalty; mean raw and shaped correctness reward over the rollouts of the penalised steps.",
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
        "Pending: " + ("none." if not PENDING else ""),
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
    ap.add_argument("--timeout", type=float, default=6 * 3600,
                    help="seconds per pytest run; tests not finished by then are reported as not run")
    ap.add_argument("--sequential", action="store_true",
                    help="run the stock pytest process, then the MEDS one (default: both side by side)")
    ap.add_argument("--fp32", action="store_true",
                    help="both runs train in float32 where a test leaves TRL's bf16 default unset (CPU feasibility: "
                         "TRL's chunked log-prob in bf16 is ~40x slower than in fp32 on a CPU without bf16 matmul)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "trl_compat.md"))
    args = ap.parse_args(argv)
    if args.fp32:
        os.environ["MEDS_TRL_COMPAT_FP32"] = "1"  # read by the plugin in both pytest processes

    if args.tests_dir:
        tests_dir, source = check_tests_dir(args.tests_dir), "read from --tests-dir"
    else:
        tests_dir, source = fetch_tests(args.commit, args.cache), "downloaded from GitHub"
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from trl_standins import build_mirror

    mirror = build_mirror(os.path.join(args.cache, "trl_standins"))
    load_before = _loadavg()
    results, seconds = run_pytest(("stock", "meds"), tests_dir, mirror, list(CLASSES if args.all else SELECTION),
                                  args.keyword, args.timeout, parallel=not args.sequential)
    rows = verdicts(results["stock"], results["meds"])
    md = report_md(rows, seconds, args.commit, source, load_before, _loadavg(), args.keyword, args.all,
                   not args.sequential, args.timeout)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(md)
    print(md)
    return 1 if any(r["verdict"] == "REGRESSION" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
