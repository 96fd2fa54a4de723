"""Run by test_trl_adapter.py: a real MEDSGRPOTrainer run that kills itself (os._exit, no cleanup) at one point of
the checkpoint save sequence, or resumes with ``train(resume_from_checkpoint=True)``.

Usage: python tests/trl_kill_during_save.py OUT_DIR KILL_POINT|none RESUME(0/1) MAX_STEPS

Appends one JSON line to OUT_DIR/log.jsonl before training (what the run resumes from, and what Transformers'
own ``get_last_checkpoint`` would have picked) and, when it finishes, one more line; writes the final memory to
OUT_DIR/final.bin.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import trl_toy as T  # noqa: E402
from transformers.trainer_callback import TrainerState  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from meds_core import MEDSConfig  # noqa: E402
from meds_core.adapters.trl import MEDSGRPOTrainer, last_complete_checkpoint  # noqa: E402
from meds_core.step.memory import ErrorMemory  # noqa: E402

KILLED = 86
# Points of the save sequence, in the order they happen inside checkpoint-N/.
POINTS = ("model", "optimizer", "rng", "trainer_state", "memory_partial", "memory_tmp", "memory", "end")
ARMED = {"point": None, "step": None}
_trainer = []


def _armed(point: str) -> bool:
    return ARMED["point"] == point and _trainer and _trainer[0].state.global_step == ARMED["step"]


def _die() -> None:
    os._exit(KILLED)


class Killing(MEDSGRPOTrainer):
    def save_model(self, *a, **k):
        out = super().save_model(*a, **k)
        if _armed("model") and k.get("_internal_call"):
            _die()
        return out

    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        if _armed("optimizer"):
            _die()

    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        if _armed("rng"):
            _die()

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if _armed("end"):
            _die()


_save_to_json = TrainerState.save_to_json


def save_to_json(self, path):
    _save_to_json(self, path)
    if _armed("trainer_state") and os.path.basename(os.path.dirname(path)).startswith("checkpoint-"):
        _die()


_replace = os.replace


def replace(src, dst, *a, **k):
    if os.path.basename(src).startswith(".meds_memory."):
        if _armed("memory_partial"):
            with open(src, "r+b") as f:
                f.truncate(os.path.getsize(src) // 2)
            _die()
        if _armed("memory_tmp"):
            _die()
    return _replace(src, dst, *a, **k)


_save = ErrorMemory.save


def save(self, path):
    _save(self, path)
    if _armed("memory"):
        _die()


TrainerState.save_to_json = save_to_json
os.replace = replace
ErrorMemory.save = save


def main(out_dir: str, point: str, resume: bool, max_steps: int) -> None:
    tok = T.toy_tokenizer()
    args = T.grpo_args(os.path.join(out_dir, "out"), max_steps=max_steps, save_strategy="steps", save_steps=1,
                       save_total_limit=1)
    tr = Killing(model=T.warm_model(tok), reward_funcs=[T.accuracy], args=args, train_dataset=T.toy_dataset(n=40),
                 processing_class=tok, meds_config=MEDSConfig(use_last_n_layers=3, penalty_coef=0.5))
    _trainer.append(tr)
    start = 0
    record = {"point": point, "resume": resume}
    if resume:
        found = last_complete_checkpoint(args.output_dir)
        record.update(resumed_from=found, transformers_pick=get_last_checkpoint(args.output_dir))
        start = int(found.rsplit("-", 1)[1])
    ARMED.update(point=None if point == "none" else point, step=start + 1 if resume else 2)
    with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    tr.train(resume_from_checkpoint=True if resume else None)
    tr.meds_memory.save(os.path.join(out_dir, "final.bin"))
    with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
        f.write(json.dumps({"finished": True, "memory_step": tr.meds_memory.step}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]))
