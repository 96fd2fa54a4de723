"""The ``meds`` command: ``meds eval`` (pass@k and diversity of a checkpoint), ``meds inspect`` (a saved memory),
``meds demo`` (GRPO with and without MEDS on a toy task, on CPU), ``meds warmup`` (compile the clustering kernels).

Each subcommand is a ``_add_<name>(subparsers)`` that declares its arguments, a ``_check_<name>(args)`` that
validates every option before any work starts, and a ``_run_<name>(args)`` that imports what it needs (torch,
transformers, matplotlib are never imported by ``import meds_core.cli``).

User errors (a bad value, a missing or corrupt file, a missing model folder) print ONE line
``meds <command>: error: <what is wrong and the fix>`` and exit with status 2; ``--debug`` shows the traceback
instead. An output folder that a failed command created and left empty is removed.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence


class UserError(ValueError):
    """A bad option value or input file, reported as one line (exit status 2)."""


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (default off)")
    return p


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _int_at_least(args: argparse.Namespace, name: str, low: int, optional: bool = False) -> None:
    value = getattr(args, name)
    if optional and value is None:
        return
    flag = "--" + name.replace("_", "-")
    _require(value >= low, f"{flag} {value} is not valid: it must be an integer >= {low}.")


def _finite(args: argparse.Namespace, name: str, low: float, high: float | None = None,
            low_open: bool = False) -> None:
    value = getattr(args, name)
    flag = "--" + name.replace("_", "-")
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and (high is None or value <= high)
    rng = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
    _require(ok, f"{flag} {value} is not valid: it must be a finite number {rng}.")


def _check_out(out: str) -> None:
    _require(not os.path.exists(out) or os.path.isdir(out),
             f"--out {out!r} is a file, not a folder; pass a folder name (it is created if needed).")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_folder(model: str) -> None:
    """A local model folder must exist and hold ``config.json``; a name that is not a folder must look like a
    Hugging Face hub id (``org/name``)."""
    if os.path.isdir(model):
        _require(os.path.isfile(os.path.join(model, "config.json")),
                 f"model folder {model!r} has no config.json; pass a folder written by save_pretrained "
                 "(e.g. examples/plain_rl_loop.py --save-model FOLDER).")
        return
    _require(not os.path.exists(model), f"model {model!r} is a file; pass the model's folder (save_pretrained).")
    _require(bool(_HUB_ID.match(model)) and not model.startswith((".", "~")),
             f"model folder {model!r} does not exist; pass a folder written by save_pretrained (e.g. "
             "python examples/plain_rl_loop.py --save-model tiny_policy) or a hub id such as Qwen/Qwen2.5-Math-1.5B.")


# ---------------------------------------------------------------------------------------------------- eval
def _add_eval(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", parents=[_common()],
                       help="sample n completions per problem; report pass@k, length and diversity",
                       description="Sample n completions per problem, grade them (math-verify, else exact match of "
                                   "the last \\boxed{}), and report pass@k (k = 1, 2, 4, ..., n), the mean response "
                                   "length and the diversity of the answer features per dataset. Resumable: problems "
                                   "already in OUT/cache.jsonl are skipped.")
    p.add_argument("model", help="HF model folder (save_pretrained) or hub id")
    p.add_argument("data", nargs="+", help="problem files: .jsonl/.parquet with problem/answer or veRL's "
                                           "prompt/reward_model.ground_truth")
    p.add_argument("--out", required=True, help="output folder (results.json, results.md, cache.jsonl); required")
    p.add_argument("-n", "--n", type=int, default=16, help="completions per problem (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=8192, help="generated tokens per completion (default 8192)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, 0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling, in (0, 1] (default 1.0 = off)")
    p.add_argument("--top-k", type=int, default=0, help="top-k sampling, 0 = off (default 0)")
    p.add_argument("--template", default="qwen-math",
                   help="'qwen-math' (default: problem + 'Please reason step by step, and put your final answer "
                        "within \\boxed{}.' through the chat template), 'plain' (the problem as it is), or a string "
                        "holding {problem}")
    p.add_argument("--response-prefix", default="",
                   help="text forced at the start of every response; graded with the response, and a \\boxed{ it "
                        "opens that the response never closes is closed (default none)")
    p.add_argument("--engine", choices=("auto", "hf", "vllm"), default="auto",
                   help="auto: vLLM when installed with a GPU, else transformers generate (default auto)")
    p.add_argument("--grader", choices=("auto", "math-verify", "exact"), default="auto",
                   help="auto: math-verify when installed (pip install 'meds_core[eval]'), else exact match of the "
                        "last \\boxed{} with a warning (default auto)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="problems per generation call (default 8)")
    p.add_argument("--no-features", action="store_true",
                   help="skip the diversity metrics, no feature forward (default: computed)")
    p.add_argument("--feature-layers", type=int, default=None,
                   help="layers per answer feature (default min(14, number of layers))")
    p.add_argument("--limit", type=int, default=None, help="first LIMIT problems of each file (default all)")
    p.add_argument("--device", default=None, help="torch device of the transformers model (default cuda if available)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.6,
                   help="vLLM's share of GPU memory, in (0, 1] (default 0.6: the feature model shares the GPU)")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM context length (default 32768)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr (default: shown)")
    return p


def _check_eval(args: argparse.Namespace) -> None:
    from meds_core.evaluation.math_eval import check_template

    check_model_folder(args.model)
    for path in args.data:
        _require(os.path.isfile(path), f"data file {path!r} does not exist; pass .jsonl or .parquet problem files.")
    _check_out(args.out)
    for name, low in (("n", 1), ("max_new_tokens", 1), ("top_k", 0), ("batch_size", 1)):
        _int_at_least(args, name, low)
    for name in ("feature_layers", "limit", "max_model_len"):
        _int_at_least(args, name, 1, optional=True)
    _finite(args, "temperature", 0.0)
    _finite(args, "top_p", 0.0, 1.0, low_open=True)
    _finite(args, "gpu_memory_utilization", 0.0, 1.0, low_open=True)
    try:
        check_template(args.template)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.grader == "math-verify":
        from meds_core.evaluation.grading import math_verify_available

        _require(math_verify_available(), "--grader math-verify needs the math-verify package: "
                                           "pip install 'meds_core[eval]', or pass --grader exact.")


def _run_eval(args: argparse.Namespace) -> int:
    from meds_core.evaluation.math_eval import evaluate, results_markdown

    try:
        report = evaluate(args.model, args.data, args.out, n=args.n, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, template=args.template,
                          response_prefix=args.response_prefix, engine=args.engine, grader=args.grader,
                          seed=args.seed, batch_size=args.batch_size, features=not args.no_features,
                          feature_layers=args.feature_layers, limit=args.limit, device=args.device,
                          gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
                          verbose=not args.quiet)
    except OSError as exc:
        if os.path.isdir(args.model):
            raise
        raise UserError(f"model {args.model!r} is not a local folder, and loading it as a Hugging Face hub id failed "
                        f"({_one_line(exc)}); pass a folder written by save_pretrained, or check the id and the "
                        "connection.") from exc
    print(results_markdown(report))
    print(f"wrote {args.out}/results.json and {args.out}/results.md")
    return 0


# ---------------------------------------------------------------------------------------------------- inspect
def _add_inspect(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("inspect", parents=[_common()], help="summary table and plots of a saved error memory",
                       description="Summary (memories, rows, clusters, noise, repeated errors, top prompts) and PNG "
                                   "plots (per-cluster heatmap of one prompt's features, cluster-size histogram, "
                                   "penalty distribution) of a file written by ErrorMemory.save.")
    p.add_argument("memory", help="memory file (ErrorMemory.save / examples/plain_rl_loop.py --memory-out)")
    p.add_argument("--out", default="meds_inspect", help="output folder (default meds_inspect/)")
    p.add_argument("--key", default=None, help="prompt key of the heatmap (default: most repeated errors)")
    p.add_argument("--group", choices=("wrong", "correct"), default="wrong",
                   help="memory of the heatmap (default wrong)")
    p.add_argument("--top", type=int, default=10, help="prompts listed by repeated errors, >= 1 (default 10)")
    p.add_argument("--no-plots", action="store_true", help="summary only, no matplotlib (default: plots)")
    p.add_argument("--answers", default=None,
                   help="answer file of the stored rows (examples/plain_rl_loop.py --answers-out): the heatmap names "
                        "each cluster's most frequent answer (default: sizes only)")
    return p


def _check_inspect(args: argparse.Namespace) -> None:
    _require(os.path.isfile(args.memory),
             f"memory file {args.memory!r} does not exist; write one with ErrorMemory.save or "
             "python examples/plain_rl_loop.py --memory-out meds_memory.bin.")
    _int_at_least(args, "top", 1)
    _require(args.answers is None or os.path.isfile(args.answers),
             f"--answers {args.answers!r} does not exist; write one with python examples/plain_rl_loop.py "
             "--answers-out FILE, or leave the option out.")
    _check_out(args.out)


def _run_inspect(args: argparse.Namespace) -> int:
    from meds_core.inspection.memory_report import inspect_memory, load_answers

    answers = load_answers(args.answers) if args.answers else None
    summary = inspect_memory(args.memory, args.out, key=args.key, group=0 if args.group == "wrong" else 1,
                             top=args.top, plots=not args.no_plots, answers=answers)
    print(summary["markdown"])
    print("wrote " + ", ".join(summary["files"].values()))
    return 0


# ---------------------------------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", parents=[_common()],
                       help="TRL GRPO with MEDS vs baseline vs a shuffled-penalty control on a toy task (CPU)",
                       description="Build a tiny Qwen2 and a word-level tokenizer in-process (no downloads), "
                                   "warm-start it on 'a + b =' so each prompt has several systematic error modes, "
                                   "then run TRL GRPO from the same start and seeds as baseline, MEDS and a "
                                   "shuffled-penalty control (partial-credit reward, scale_rewards='none'). Prints a "
                                   "per-step table and a summary over seeds that claims only what beats the control; "
                                   "writes OUT/metrics.json (with library versions and machine facts), samples.json, "
                                   "steps.tsv and PNG plots. The recorded 3-seed run (docs/demo_metrics.json) took "
                                   "249 s on 2 busy CPU cores; --quick takes under a minute.")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..SEEDS-1, each run by all three methods (default 3)")
    p.add_argument("--steps", type=int, default=60, help="GRPO steps per run (default 60)")
    p.add_argument("--batch", type=int, default=32,
                   help="completions per step, a multiple of 8 (default 32 = 4 prompts x 8)")
    p.add_argument("--penalty-coef", type=float, default=0.5, help="MEDS alpha, finite and >= 0 (default 0.5)")
    p.add_argument("--mixed-groups-only", action="store_true",
                   help="shape only groups holding both a correct and a wrong completion (MEDSConfig's default); "
                        "the demo shapes every group by default, see docs/evidence.md (default off)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 6 steps, short warm-up (default off)")
    p.add_argument("--report-md", metavar="METRICS_JSON", default=None,
                   help="print README's markdown table of a metrics.json written by the demo, and run nothing "
                        "(default: run the demo)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-step table; summary only "
                                                              "(default: shown)")
    return p


def _check_demo(args: argparse.Namespace) -> None:
    if args.report_md is not None:
        _require(os.path.isfile(args.report_md), f"--report-md {args.report_md!r} does not exist; pass the "
                                                 "metrics.json a demo run wrote (e.g. demo_out/metrics.json).")
        return
    for name in ("seeds", "steps"):
        _int_at_least(args, name, 1)
    _require(args.batch >= 8 and args.batch % 8 == 0,
             f"--batch {args.batch} is not valid: it must be a positive multiple of 8 (8 completions per prompt).")
    _finite(args, "penalty_coef", 0.0)
    _check_out(args.out)
    try:
        import matplotlib  # noqa: F401
        import trl  # noqa: F401
    except ImportError:
        raise UserError("meds demo needs TRL and matplotlib: pip install 'meds_core[demo]'.") from None


def _run_demo(args: argparse.Namespace) -> int:
    if args.report_md is not None:
        from meds_core.demo.report import readme_table

        print(readme_table(args.report_md))
        return 0
    from meds_core.demo.pipeline import run_demo

    run_demo(out=args.out, seeds=args.seeds, steps=args.steps, batch=args.batch, penalty_coef=args.penalty_coef,
             quick=args.quick, quiet=args.quiet, mixed_groups_only=args.mixed_groups_only)
    return 0


# ---------------------------------------------------------------------------------------------------- warmup
def _add_warmup(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("warmup", parents=[_common()], help="compile the numba clustering kernels once",
                          description="Compile the numba clustering kernels into numba's disk cache, so that the "
                                      "first MEDS step of a training run does not wait for them. Runs once per "
                                      "environment (about 1-2 minutes on 2 cores); later calls return at once.")


def _check_warmup(args: argparse.Namespace) -> None:
    pass


def _run_warmup(args: argparse.Namespace) -> int:
    from meds_core.step.warmup import warm_clustering_kernels

    seconds = warm_clustering_kernels(verbose=True)
    print(f"clustering kernels ready ({seconds:.1f} s)")
    return 0


# name -> (add arguments, check arguments, run); `bench` joins here.
COMMANDS = {"eval": (_add_eval, _check_eval, _run_eval), "inspect": (_add_inspect, _check_inspect, _run_inspect),
            "demo": (_add_demo, _check_demo, _run_demo), "warmup": (_add_warmup, _check_warmup, _run_warmup)}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's own parser."""
    parser = argparse.ArgumentParser(prog="meds", description="MEDS (Memory-Enhanced Dynamic reward Shaping) tools.")
    from meds_core import __version__

    parser.add_argument("--version", action="version", version=f"meds_core {__version__}")
    parser.add_argument("--debug", dest="debug_top", action="store_true",
                        help="show the full traceback of an error (default off)")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    subparsers = {name: add(sub) for name, (add, _, _) in COMMANDS.items()}
    return parser, subparsers


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text += f": {exc.filename}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``meds`` / ``python -m meds_core``; returns the exit status (2 for a user error)."""
    parser, subparsers = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        parser.print_help(sys.stderr)
        return 2
    if extra:  # the subcommand's own usage, not the top-level one
        subparsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    debug = args.debug or args.debug_top
    _, check, run = COMMANDS[args.command]
    out = getattr(args, "out", None)
    out_existed = out is not None and os.path.exists(out)
    try:
        check(args)
        return run(args)
    except (ValueError, OSError, ImportError) as exc:  # UserError, MemoryFileError, missing files, missing extras
        if out is not None and not out_existed and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        if debug:
            raise
        print(f"meds {args.command}: error: {_one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
