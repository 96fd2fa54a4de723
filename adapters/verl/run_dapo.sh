#!/usr/bin/env bash
# Baseline: the same recipe without MEDS, on veRL's own entry point (nothing of meds_core runs).
# Usage: MODEL_PATH=... TRAIN_FILE=... TEST_FILE=... CKPTS_DIR=... bash run_dapo.sh [extra hydra overrides]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/recipe_args.sh"

run_or_print python3 -m verl.trainer.main_ppo \
  "${RECIPE_ARGS[@]}" \
  trainer.experiment_name="${EXPERIMENT:-qwen2.5-math-7b-dapo}" \
  "$@"
