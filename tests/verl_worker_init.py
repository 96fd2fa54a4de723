"""Run ``MEDSActorRolloutRefWorker.init_model`` for real on CPU, in this process (a 1-rank gloo group), and print
what it built as one JSON line. Run by tests/test_verl_worker.py in a subprocess: veRL reads ``VERL_PLATFORM`` when
it is first imported, and the process group lives as long as the process.

veRL's own ``ActorRolloutRefWorker.__init__`` and ``init_model`` run unchanged (FSDP2 engine on the CPU platform of
``meds_core.adapters.verl.cpu``) on a tiny random Qwen2 saved to a temporary folder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    PORT = s.getsockname()[1]
os.environ.update(VERL_PLATFORM="cpu", VERL_USE_EXTERNAL_MODULES="meds_core.adapters.verl.cpu", RANK="0",
                  WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(PORT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

OVERRIDES = [
    "actor_rollout_ref.rollout.n=2", "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "meds.use_last_n_layers=3", "actor_rollout_ref.actor.strategy=fsdp2",
    "actor_rollout_ref.actor.fsdp_config.dtype=float32", "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "actor_rollout_ref.model.use_remove_padding=False", "actor_rollout_ref.model.enable_gradient_checkpointing=False",
    "actor_rollout_ref.rollout.name=hf_cpu", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.actor.use_dynamic_bsz=True", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=512",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True",
    "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=512",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True", "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=512",
]


def main() -> None:
    from hydra import compose, initialize_config_module
    from omegaconf import open_dict

    from meds_core.testing import tiny_qwen2, word_tokenizer

    folder = os.path.join(tempfile.mkdtemp(), "model")
    tok = word_tokenizer(["<pad>", "<eos>", "1", "2", "+", "="], pad_token="<pad>", eos_token="<eos>")
    tiny_qwen2(len(tok), tokenizer=tok, max_position_embeddings=64).save_pretrained(folder)
    tok.save_pretrained(folder)
    with initialize_config_module(config_module="meds_core.adapters.verl.config", version_base=None):
        cfg = compose(config_name="meds_trainer",
                      overrides=[*OVERRIDES, f"actor_rollout_ref.model.path={folder}", *sys.argv[1:]])

    from meds_core.adapters.verl.engine_capture import EngineCapture
    from meds_core.adapters.verl.worker import MEDSActorRolloutRefWorker

    worker = MEDSActorRolloutRefWorker(config=cfg.actor_rollout_ref, role="actor_rollout")
    worker.init_model()
    capture = worker.meds_capture
    engine = worker.actor.engine
    report = {"capture": isinstance(capture, EngineCapture), "engine": type(engine).__name__,
              "same_engine_capture": getattr(engine, "_meds_capture", None) is capture,
              "layers": capture.config.use_last_n_layers, "hooked": type(capture.capture).__name__,
              "module": type(getattr(engine.module, "_fsdp_wrapped_module", engine.module)).__name__}
    with open_dict(worker.config):
        worker.config.model.use_fused_kernels = True
    try:
        worker.init_model()
    except ValueError as exc:
        report["fused_error"] = str(exc)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
