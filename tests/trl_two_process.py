"""Run by test_trl_adapter.py under torchrun (2 CPU processes, gloo): MEDSGRPOTrainer on DDP; dumps each rank's view.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/trl_two_process.py OUT_DIR
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import trl_toy as T  # noqa: E402

from meds_core import MEDSConfig  # noqa: E402
from meds_core.adapters.trl import MEDSGRPOTrainer  # noqa: E402


class Dumping(MEDSGRPOTrainer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.steps = []

    def _meds_features(self, prompts, completion_ids):
        feats, no_answer = super()._meds_features(prompts, completion_ids)
        self.steps.append({"local_features": feats.cpu().numpy()})
        return feats, no_answer

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        out = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.model.training:
            self.steps[-1]["rewards"] = out.cpu().numpy()
            self.steps[-1]["keys"] = np.array([x["prompt_id"] for x in inputs])
        return out


def main(out_dir: str) -> None:
    tok = T.toy_tokenizer()
    model = T.warm_start(T.toy_model(), tok)
    args = T.grpo_args(out_dir, per_device_train_batch_size=4, num_generations=4, max_steps=4)
    tr = Dumping(model=model, reward_funcs=[T.accuracy], args=args, train_dataset=T.toy_dataset(), processing_class=tok,
                 meds_config=MEDSConfig(use_last_n_layers=3, penalty_coef=0.5))
    tr.train()
    rank = tr.accelerator.process_index
    mem = tr.meds_memory
    keys = mem.keys()
    dump = {"world": np.array(tr.accelerator.num_processes), "mem_keys": np.array([f"{k}/{g}" for k, g in keys]),
            "mem_rows": np.concatenate([mem.rows(k, g) for k, g in keys]),
            "mem_labels": np.concatenate([mem.labels(k, g) for k, g in keys])}
    for i, s in enumerate(tr.steps):
        for k, v in s.items():
            dump[f"s{i}_{k}"] = v
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **dump)


if __name__ == "__main__":
    main(sys.argv[1])
