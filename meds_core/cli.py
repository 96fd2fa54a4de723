"""The ``meds`` command: ``meds eval`` (pass@k and diversity of a checkpoint), ``meds inspect`` (a saved memory),
``meds demo`` (GRPO with and without MEDS on a toy task, on CPU).

Each subcommand is a ``_add_<name>(subparsers)`` that declares its arguments and a ``_run_<name>(args)`` that
imports what it needs (torch, transformers, matplotlib are never imported by ``import meds_core.cli``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="sample n completions per problem; report pass@k, length and diversity",
                       description="Sample n completions per problem, grade them (math-verify), and report pass@k "
                                   "(k = 1, 2, 4, ..., n), the mean response length and the diversity of the answer "
                                   "features per dataset. Resumable: problems already in OUT/cache.jsonl are skipped.")
    p.add_argument("model", help="HF model folder (or hub id)")
    p.add_argument("data", nargs="+", help="problem files: .jsonl/.parquet with problem/answer or veRL's "
                                           "prompt/reward_model.ground_truth")
    p.add_argument("--out", required=True, help="output folder (results.json, results.md, cache.jsonl)")
    p.add_argument("-n", "--n", type=int, default=16, help="completions per problem (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=8192, help="default 8192")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="default 1.0")
    p.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    p.add_argument("--template", default="qwen-math",
                   help="'qwen-math' (default: problem + 'Please reason step by step, and put your final answer "
                        "within \\boxed{}.' through the chat template), 'plain' (the problem as it is), or a string "
                        "holding {problem}")
    p.add_argument("--response-prefix", default="", help="text forced at the start of every response (not graded)")
    p.add_argument("--engine", choices=("auto", "hf", "vllm"), default="auto",
                   help="auto: vLLM when installed with a GPU, else transformers generate")
    p.add_argument("--grader", choices=("auto", "math-verify", "exact"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="problems per generation call (default 8)")
    p.add_argument("--no-features", action="store_true", help="skip the diversity metrics (no feature forward)")
    p.add_argument("--feature-layers", type=int, default=None, help="layers per answer feature (default min(14, L))")
    p.add_argument("--limit", type=int, default=None, help="first LIMIT problems of each file")
    p.add_argument("--device", default=None, help="torch device of the transformers model (default cuda if available)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.6, help="vLLM (default 0.6: the feature model "
                                                                             "shares the GPU)")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM context length (default 32768)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _run_eval(args: argparse.Namespace) -> int:
    from meds_core.evaluation import evaluate, results_markdown

    report = evaluate(args.model, args.data, args.out, n=args.n, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, template=args.template,
                      response_prefix=args.response_prefix, engine=args.engine, grader=args.grader, seed=args.seed,
                      batch_size=args.batch_size, features=not args.no_features, feature_layers=args.feature_layers,
                      limit=args.limit, device=args.device, gpu_memory_utilization=args.gpu_memory_utilization,
                      max_model_len=args.max_model_len, verbose=not args.quiet)
    print(results_markdown(report))
    print(f"wrote {args.out}/results.json and {args.out}/results.md")
    return 0


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summary table and plots of a saved error memory",
                       description="Summary (memories, rows, clusters, noise, repeated errors, top prompts) and PNG "
                                   "plots (per-cluster heatmap of one prompt's features, cluster-size histogram, "
                                   "penalty distribution) of a file written by ErrorMemory.save.")
    p.add_argument("memory", help="memory file (ErrorMemory.save / examples/plain_rl_loop.py --memory-out)")
    p.add_argument("--out", default="meds_inspect", help="output folder (default meds_inspect/)")
    p.add_argument("--key", default=None, help="prompt key of the heatmap (default: most repeated errors)")
    p.add_argument("--group", choices=("wrong", "correct"), default="wrong", help="memory of the heatmap")
    p.add_argument("--top", type=int, default=10, help="prompts listed by repeated errors (default 10)")
    p.add_argument("--no-plots", action="store_true", help="summary only (no matplotlib)")


def _run_inspect(args: argparse.Namespace) -> int:
    from meds_core.inspection import inspect_memory

    summary = inspect_memory(args.memory, args.out, key=args.key, group=0 if args.group == "wrong" else 1,
                             top=args.top, plots=not args.no_plots)
    print(summary["markdown"])
    print("wrote " + ", ".join(summary["files"].values()))
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="TRL GRPO with MEDS vs baseline vs a shuffled-penalty control on a toy task (CPU)",
                       description="Build a tiny Qwen2 and a word-level tokenizer in-process (no downloads), "
                                   "warm-start it on 'a + b =' so each prompt has several systematic error modes, "
                                   "then run TRL GRPO from the same start and seeds as baseline, MEDS and a "
                                   "shuffled-penalty control (partial-credit reward, scale_rewards='none'). Prints a "
                                   "per-step table and a summary over seeds that claims only what beats the control; "
                                   "writes OUT/metrics.json, samples.json, steps.tsv and PNG plots. About 2 minutes "
                                   "on 2 CPU cores.")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--seeds", type=int, default=3,
                   help="seeds 0..SEEDS-1, each run by all three methods (default 3)")
    p.add_argument("--steps", type=int, default=60, help="GRPO steps per run (default 60)")
    p.add_argument("--batch", type=int, default=32,
                   help="completions per step, a multiple of 8 (default 32 = 4 prompts x 8)")
    p.add_argument("--penalty-coef", type=float, default=0.5, help="MEDS alpha (default 0.5)")
    p.add_argument("--mixed-groups-only", action="store_true",
                   help="shape only groups holding both a correct and a wrong completion (MEDSConfig's default); the "
                        "demo shapes every group by default, as the research probe measured with scale_rewards='none'")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 6 steps, short warm-up (seconds)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-step table; summary only")


def _run_demo(args: argparse.Namespace) -> int:
    try:
        import trl  # noqa: F401
    except ImportError:
        print("meds demo needs TRL and matplotlib: pip install 'meds_core[demo]'", file=sys.stderr)
        return 1
    from meds_core.demo.pipeline import run_demo

    run_demo(out=args.out, seeds=args.seeds, steps=args.steps, batch=args.batch, penalty_coef=args.penalty_coef,
             quick=args.quick, quiet=args.quiet, mixed_groups_only=args.mixed_groups_only)
    return 0


# name -> (add arguments, run); `bench` joins here.
COMMANDS = {"eval": (_add_eval, _run_eval), "inspect": (_add_inspect, _run_inspect), "demo": (_add_demo, _run_demo)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meds", description="MEDS (Memory-Enhanced Dynamic reward Shaping) tools.")
    from meds_core import __version__

    parser.add_argument("--version", action="version", version=f"meds_core {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``meds`` / ``python -m meds_core``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
