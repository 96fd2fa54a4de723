# Shared veRL 0.9 overrides of the reference MEDS/DAPO recipe; sourced by run_meds.sh and
# run_dapo.sh so the MEDS run and its baseline differ only in MEDS. Needs MODEL_PATH, TRAIN_FILE, TEST_FILE, CKPTS_DIR.
: "${MODEL_PATH:?set MODEL_PATH to the Qwen2.5-Math-7B folder}"
: "${TRAIN_FILE:?set TRAIN_FILE to the training parquet (prepare_data.py)}"
: "${TEST_FILE:?set TEST_FILE to the AIME-2024 parquet (prepare_data.py)}"
: "${CKPTS_DIR:?set CKPTS_DIR to the checkpoint folder}"
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
PROJECT=${PROJECT:-meds}

max_prompt_length=1024
max_response_length=3072
overlong_buffer_len=512
max_tokens_per_gpu=$((max_prompt_length + max_response_length))   # 4096: dynamic batch size budget

RECIPE_ARGS=(
  data.train_files="${TRAIN_FILE}"
  data.val_files="${TEST_FILE}"
  data.prompt_key=prompt
  data.truncation=left
  data.max_prompt_length=${max_prompt_length}
  data.max_response_length=${max_response_length}
  data.train_batch_size=512
  actor_rollout_ref.rollout.n=16
  algorithm.adv_estimator=grpo
  algorithm.use_kl_in_reward=False
  algorithm.kl_ctrl.kl_coef=0.0
  algorithm.filter_groups.enable=True
  algorithm.filter_groups.metric=acc
  algorithm.filter_groups.max_inflight_gen_batches=10
  actor_rollout_ref.actor.use_kl_loss=False
  actor_rollout_ref.actor.kl_loss_coef=0.0
  actor_rollout_ref.actor.clip_ratio_low=0.2
  actor_rollout_ref.actor.clip_ratio_high=0.28
  actor_rollout_ref.actor.clip_ratio_c=10.0
  actor_rollout_ref.actor.loss_agg_mode=token-mean
  actor_rollout_ref.actor.entropy_coeff=0
  actor_rollout_ref.actor.grad_clip=1.0
  actor_rollout_ref.actor.optim.lr=1e-6
  actor_rollout_ref.actor.optim.lr_warmup_steps=10
  actor_rollout_ref.actor.optim.weight_decay=0.1
  actor_rollout_ref.actor.ppo_mini_batch_size=16
  actor_rollout_ref.actor.use_dynamic_bsz=True
  actor_rollout_ref.actor.ppo_max_token_len_per_gpu=${max_tokens_per_gpu}
  actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True
  actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=${max_tokens_per_gpu}
  actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True
  actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=${max_tokens_per_gpu}
  actor_rollout_ref.actor.strategy=fsdp2
  actor_rollout_ref.model.path="${MODEL_PATH}"
  actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=True
  actor_rollout_ref.rollout.name=vllm
  actor_rollout_ref.rollout.tensor_model_parallel_size=1
  actor_rollout_ref.rollout.gpu_memory_utilization=0.8
  actor_rollout_ref.rollout.temperature=1.0
  actor_rollout_ref.rollout.top_p=1.0
  actor_rollout_ref.rollout.max_num_batched_tokens=$((max_prompt_length + max_response_length))
  actor_rollout_ref.rollout.val_kwargs.do_sample=True
  actor_rollout_ref.rollout.val_kwargs.temperature=1.0
  actor_rollout_ref.rollout.val_kwargs.top_p=1.0
  actor_rollout_ref.rollout.val_kwargs.n=16
  reward.reward_manager.name=dapo
  +reward.reward_kwargs.max_resp_len=${max_response_length}
  +reward.reward_kwargs.overlong_buffer_cfg.enable=True
  +reward.reward_kwargs.overlong_buffer_cfg.len=${overlong_buffer_len}
  +reward.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0
  +reward.reward_kwargs.overlong_buffer_cfg.log=False
  trainer.use_v1=True
  trainer.logger='["console","wandb"]'
  trainer.project_name="${PROJECT}"
  trainer.n_gpus_per_node=${GPUS_PER_NODE}
  trainer.nnodes=${NNODES}
  trainer.total_epochs=100
  trainer.test_freq=2
  trainer.save_freq=50
  trainer.val_before_train=True
  trainer.resume_mode=auto
  trainer.default_local_dir="${CKPTS_DIR}"
)

# DRY_RUN=1 prints the command's arguments one per line instead of running it (used by the tests).
run_or_print() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then printf '%s\n' "$@"; else "$@"; fi
}
