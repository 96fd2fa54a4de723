"""``meds demo``: GRPO with MEDS vs baseline vs a shuffled-penalty control on a toy arithmetic task (CPU)."""
