"""One GRPO run of the demo (baseline, MEDS or shuffled-penalty control) on TRL's GRPOTrainer, from a warm start.

Every run of a seed starts from the same weights and the same seed, so the three methods sample identical
completions until MEDS first applies a non-zero penalty. The run records every sampled completion (through the
reward function), TRL's per-step logs, the wall time of each optimizer step, and an exact evaluation
(:mod:`.evaluate`) every ``eval_every`` steps.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meds_core.demo.controls import shuffle_within_groups
from meds_core.demo.exact_eval import completion_probs, exact_metrics
from meds_core.demo.task import Task, parse_answer, partial_credit

METHODS = ("baseline", "meds", "shuffle")


@dataclass
class RunSettings:
    """GRPO settings shared by every run (research note ``meds_effect_toy.md`` section 7)."""

    steps: int = 60
    batch: int = 32  # completions per step = prompts per step x num_generations
    num_generations: int = 8
    learning_rate: float = 3e-4
    max_completion_length: int = 12
    penalty_coef: float = 0.5
    use_last_n_layers: int = 4
    mixed_groups_only: bool = False
    eval_every: int = 5

    def __post_init__(self) -> None:
        if self.batch % self.num_generations or self.batch < self.num_generations:
            raise ValueError(f"batch={self.batch} must be a positive multiple of num_generations="
                             f"{self.num_generations} (e.g. 32 = 4 prompts x 8)")
        if self.steps < 1 or self.eval_every < 1:
            raise ValueError(f"steps={self.steps} and eval_every={self.eval_every} must be >= 1")


@dataclass
class RunLog:
    """What one run recorded. Sample arrays are aligned, one entry per sampled completion."""

    method: str
    seed: int
    samples: dict[str, list] = field(default_factory=lambda: {"step": [], "group": [], "prompt_id": [], "answer": [],
                                                              "reward": []})
    steps: list[dict[str, float]] = field(default_factory=list)  # per optimizer step: seconds + TRL's logs
    evals: list[dict[str, Any]] = field(default_factory=list)  # step, acc, entropy, top_wrong, acc_held
    raw_reward: dict[int, float] = field(default_factory=dict)  # step -> mean partial reward before shaping
    train_seconds: float = 0.0


class PartialReward:
    """Reward function for TRL: 1 correct, 0.5 near miss, 0 otherwise; logs every completion into ``log``."""

    __name__ = "partial_reward"

    def __init__(self, log: RunLog, num_generations: int) -> None:
        self.log, self.num_generations = log, num_generations

    def __call__(self, prompts: list, completions: list[str], answer: list[int], prompt_id: list[int],
                 trainer_state: Any = None, **kwargs: Any) -> list[float]:
        step = (trainer_state.global_step if trainer_state is not None else 0) + 1
        rewards = [partial_credit(parse_answer(c), int(a)) for c, a in zip(completions, answer)]
        s = self.log.samples
        for i, (c, p, r) in enumerate(zip(completions, prompt_id, rewards)):
            s["step"].append(step)
            s["group"].append(step * 100_000 + i // self.num_generations)
            s["prompt_id"].append(int(p))
            s["answer"].append(c.strip())
            s["reward"].append(r)
        self.log.raw_reward[step] = float(np.mean(rewards)) if rewards else float("nan")
        return rewards


def _trainer_class(method: str) -> type:
    """The trainer class of a method: stock ``trl.GRPOTrainer``, ``MEDSGRPOTrainer`` or the shuffled control."""
    if method == "baseline":
        from trl import GRPOTrainer

        return GRPOTrainer
    from meds_core.adapters.trl import MEDSGRPOTrainer

    if method == "meds":
        return MEDSGRPOTrainer

    class ShuffledPenaltyTrainer(MEDSGRPOTrainer):
        """MEDS with its cluster sizes permuted among each group's wrong completions (seeded)."""

        def meds_cluster_sizes(self, sizes: np.ndarray, correct: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
            if not hasattr(self, "_shuffle_rng"):
                self._shuffle_rng = np.random.default_rng(self.args.seed)
            return shuffle_within_groups(sizes, correct, group_ids, self._shuffle_rng)

    return ShuffledPenaltyTrainer


def _callback(log: RunLog, model_eval: Callable[[int], None], settings: RunSettings,
              on_step: Callable[[RunLog, int], None] | None) -> Any:
    from transformers import TrainerCallback

    class _DemoCallback(TrainerCallback):
        """Times each optimizer step (evaluation excluded), evaluates every ``eval_every`` steps, and merges TRL's
        per-step logs (``on_log`` comes after ``on_step_end``) into the step's entry."""

        def on_train_begin(self, args, state, control, **kwargs):
            model_eval(0)

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            log.steps.append({"step": state.global_step, "seconds": time.perf_counter() - self.t0})
            if state.global_step % settings.eval_every == 0 or state.global_step == settings.steps:
                model_eval(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "train_runtime" in logs or not log.steps or log.steps[-1]["step"] != state.global_step:
                return
            log.steps[-1].update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
            if on_step is not None:
                on_step(log, state.global_step)

    return _DemoCallback()


def run_grpo(method: str, seed: int, start: Any, tokenizer: Any, task: Task, settings: RunSettings,
             on_step: Callable[[RunLog, int], None] | None = None) -> RunLog:
    """Train a copy of ``start`` (a warm-started model, left untouched) with GRPO for ``settings.steps`` steps.

    Parameters
    ----------
    method : "baseline" (stock trl.GRPOTrainer), "meds" (MEDSGRPOTrainer) or "shuffle" (shuffled-penalty control).
    seed : TRL's seed (data order, sampling); the same for every method of a seed.
    on_step : called as ``on_step(log, step)`` after each optimizer step (progress display).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {METHODS}")
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import GRPOConfig

    from meds_core import MEDSConfig

    model = copy.deepcopy(start)
    log = RunLog(method, seed)
    number_ids = np.asarray(tokenizer.convert_tokens_to_ids([str(n) for n in range(100)]))
    n_train = len(task.train)
    correct = np.asarray([a + b for a, b in task.pairs])

    def model_eval(step: int) -> None:
        full, answer = completion_probs(model, tokenizer, task.pairs)
        train = exact_metrics(full[:n_train], answer[:n_train], number_ids, correct[:n_train])
        held = full[np.arange(n_train, len(correct)), correct[n_train:]]
        log.evals.append({"step": step, "acc": train["acc"], "entropy": train["entropy"],
                          "top_wrong": train["top_wrong"], "acc_held": float(held.mean()) if len(held) else None})

    with tempfile.TemporaryDirectory(prefix="meds_demo_") as tmp, warnings.catch_warnings():
        # transformers 5 renamed gradient_checkpointing (which TRL's GRPOConfig still sets) and warns on every config
        warnings.filterwarnings("ignore", message="`gradient_checkpointing", category=FutureWarning)
        args = GRPOConfig(output_dir=tmp, per_device_train_batch_size=settings.batch,
                          num_generations=settings.num_generations,
                          max_completion_length=settings.max_completion_length, learning_rate=settings.learning_rate,
                          max_steps=settings.steps, beta=0.0, loss_type="dapo", scale_rewards="none",
                          temperature=1.0, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
                          save_strategy="no", logging_steps=1, seed=seed, disable_tqdm=True,
                          dataloader_num_workers=0)
        kwargs: dict[str, Any] = {}
        if method != "baseline":
            kwargs = {"meds_config": MEDSConfig(penalty_coef=settings.penalty_coef,
                                                use_last_n_layers=settings.use_last_n_layers,
                                                mixed_groups_only=settings.mixed_groups_only),
                      "prompt_key_column": "prompt_id", "correctness_reward": 0, "correct_threshold": 0.75}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = _trainer_class(method)(
                model=model, reward_funcs=[PartialReward(log, settings.num_generations)], args=args,
                train_dataset=Dataset.from_list(task.dataset_rows()), processing_class=tokenizer,
                callbacks=[_callback(log, model_eval, settings, on_step)], **kwargs)
            trainer.remove_callback(PrinterCallback)  # TRL's per-step log dump: the demo prints its own table
            t0 = time.perf_counter()
            trainer.train()
            log.train_seconds = time.perf_counter() - t0
    if len(log.steps) != settings.steps or any("reward" not in e for e in log.steps):
        raise RuntimeError(f"{method} seed {seed}: expected TRL logs for each of {settings.steps} steps "
                           f"(logging_steps=1); got {sum('reward' in e for e in log.steps)} of {len(log.steps)} steps")
    return log


def quiet_libraries() -> None:
    """Silence transformers/TRL/datasets info logs and warnings (the demo prints its own table)."""
    import transformers

    transformers.logging.set_verbosity_error()
    for name in ("datasets", "trl", "accelerate", "meds_core.adapters.trl"):
        logging.getLogger(name).setLevel(logging.ERROR)
