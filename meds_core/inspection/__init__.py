"""Inspection of a saved ErrorMemory: statistics (``memory_stats``) and the summary and plots of
``meds inspect`` (``memory_report``). It may import :mod:`meds_core.step`; never adapters, demo or the CLI."""
