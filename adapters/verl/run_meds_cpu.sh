#!/usr/bin/env bash
# MEDS on veRL 0.9 without a GPU: run_meds.sh's recipe (recipe_args.sh), scaled down to a tiny local policy and 32
# toy problems, through veRL's real training loop on CPU (see cpu.py for the CPU stand-ins). Try a MEDS veRL run on
# a laptop before renting GPUs. Run from the repo root in the veRL environment:
#   bash adapters/verl/run_meds_cpu.sh [extra hydra overrides]
# Writes under ${MEDS_CPU_OUT:-verl_cpu_out}: assets/ (model, 12 + 4 toy problems), global_step_*/ checkpoints (each with
# meds_memory.bin) and metrics-run<k>.jsonl (veRL's file logger, one file per run; the console shows the same metrics).
# MEDS_CPU_ASSETS=DIR takes the model and data from DIR (built there once if missing) instead of $OUT/assets.
# MEDS_CPU_BASELINE=1 runs run_dapo.sh (the recipe without MEDS) instead. MEDS_CPU_WORKERS=2 trains with two
# data-parallel actor workers (gloo). Resuming: run it again; trainer.resume_mode=auto picks the latest checkpoint.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${MEDS_CPU_OUT:-verl_cpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ASSETS="${MEDS_CPU_ASSETS:-$OUT/assets}"
# 12 training problems, the first 4 hopeless: with data.shuffle=False the first batch is filtered out whole
[[ -f "$ASSETS/train.parquet" ]] || python3 -m meds_core.demo.verl_assets --out "$ASSETS" --hopeless 4

WORKERS=${MEDS_CPU_WORKERS:-1}
export VERL_PLATFORM=cpu VERL_USE_EXTERNAL_MODULES=meds_core.adapters.verl.cpu
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false RAY_DEDUP_LOGS=0
# veRL's file logger truncates its file: each run (a resumed one too) logs to a file of its own
runs=$(find "$OUT" -maxdepth 1 -name 'metrics-run*.jsonl' | wc -l)
export VERL_FILE_LOGGER_PATH="${VERL_FILE_LOGGER_PATH:-$OUT/metrics-run$((runs + 1)).jsonl}"
export MODEL_PATH="${MODEL_PATH:-$ASSETS/model}" TRAIN_FILE="${TRAIN_FILE:-$ASSETS/train.parquet}"
export TEST_FILE="${TEST_FILE:-$ASSETS/val.parquet}" CKPTS_DIR="$OUT"

prompt_len=24
response_len=8
tokens=$(( (prompt_len + response_len) * 16 ))   # one group per micro-batch
CPU_ARGS=(
  # sizes: 4 problems x 16 rollouts per step (the recipe's n), 4 steps, one policy update per step
  data.max_prompt_length=${prompt_len}
  data.max_response_length=${response_len}
  data.train_batch_size=4
  data.shuffle=False
  data.val_batch_size=8
  actor_rollout_ref.rollout.n=16
  actor_rollout_ref.actor.ppo_mini_batch_size=4
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=${tokens}
  actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=${tokens}
  actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=${tokens}
  actor_rollout_ref.rollout.max_num_batched_tokens=${tokens}
  actor_rollout_ref.rollout.val_kwargs.n=1
  algorithm.filter_groups.max_inflight_gen_batches=1
  reward.reward_kwargs.max_resp_len=${response_len}
  reward.reward_kwargs.overlong_buffer_cfg.len=2
  actor_rollout_ref.actor.optim.lr=1e-4
  actor_rollout_ref.actor.optim.lr_warmup_steps=0
  actor_rollout_ref.model.enable_gradient_checkpointing=False
  actor_rollout_ref.model.tokenizer_path="$ASSETS/tokenizer"
  trainer.total_training_steps=4
  trainer.total_epochs=100
  trainer.save_freq=2
  trainer.test_freq=-1
  trainer.val_before_train=False
  trainer.logger='["console","file"]'
  # CPU stand-ins (cpu.py): Ray's logical GPUs are the worker slots, HF generate is the rollout server
  trainer.n_gpus_per_node=${WORKERS}
  +ray_kwargs.ray_init.num_gpus=${WORKERS}
  +ray_kwargs.ray_init.num_cpus=16
  # one process each where the recipe runs eight (every Ray actor reserves one logical CPU)
  actor_rollout_ref.rollout.agent.num_workers=1
  reward.num_workers=1
  data.dataloader_num_workers=0
  transfer_queue.backend.SimpleStorage.num_data_storage_units=1
  actor_rollout_ref.rollout.name=hf_cpu
  actor_rollout_ref.rollout.full_determinism=True
  actor_rollout_ref.rollout.checkpoint_engine.backend=naive
  actor_rollout_ref.actor.fsdp_config.dtype=float32
  # no flash-attention on CPU: torch's SDPA, and padded batches instead of flash-attention's packed sequences
  +actor_rollout_ref.model.override_config.attn_implementation=sdpa
  actor_rollout_ref.model.use_remove_padding=False
  actor_rollout_ref.actor.fsdp_config.use_torch_compile=False
)
if [[ "${MEDS_CPU_BASELINE:-0}" == "1" ]]; then
  EXPERIMENT=cpu-dapo exec bash "$HERE/run_dapo.sh" "${CPU_ARGS[@]}" "$@"
fi
EXPERIMENT=cpu-meds exec bash "$HERE/run_meds.sh" "${CPU_ARGS[@]}" meds.use_last_n_layers=3 "$@"
