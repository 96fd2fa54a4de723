#!/usr/bin/env bash
# MEDS on veRL 0.9: the reference recipe (Qwen2.5-Math-7B, 8 GPUs per node, the paper) with MEDS shaping.
# Usage: MODEL_PATH=... TRAIN_FILE=... TEST_FILE=... CKPTS_DIR=... bash run_meds.sh [extra hydra overrides]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipe_args.sh"

run_or_print python3 -m meds_core.adapters.verl.main_meds \
  "${RECIPE_ARGS[@]}" \
  trainer.experiment_name="${EXPERIMENT:-qwen2.5-math-7b-dapo-meds}" \
  meds.cluster_method=hdbscan \
  meds.use_layer_diff=False \
  meds.use_last_n_layers=14 \
  meds.cluster_penalty_target=wrong \
  meds.penalty_coef=0.1 \
  meds.penalty_cap=2.0 \
  "$@"
