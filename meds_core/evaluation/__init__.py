"""Evaluation of a checkpoint on math problems: ``evaluate`` (``math_eval``), answer grading (``grading``), problem
files (``problems``), sampling (``_generation``), pass@k (``pass_at_k``) and answer-feature diversity
(``diversity``). It may import :mod:`meds_core.step`; never adapters, demo or the CLI.

The package itself imports nothing heavy: ``import meds_core.evaluation.pass_at_k`` needs numpy only.
"""
