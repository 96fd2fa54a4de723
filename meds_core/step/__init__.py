"""The MEDS step: everything one RL step runs, framework-agnostic.

Answer location (``answer``), the model's parts (``model_parts``), hidden-state capture (``capture``), feature
extraction (``features``), the per-prompt error memory and its file (``memory``, ``memory_file``), reward shaping
(``shaping``), prompt keys (``keys``), the whole step (``rl_step``) and its logged statistics (``step_stats``).
It may import :mod:`meds_core.clustering`; nothing here imports evaluation, inspection, adapters, demo or the CLI.
"""
