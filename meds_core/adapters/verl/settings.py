"""Start-up checks of a veRL config for MEDS and the mapping of its ``meds:`` block onto :class:`MEDSConfig`.

Config layout (``config/meds_trainer.yaml``)::

    meds:            every MEDSConfig field, same names (cluster_method, use_layer_diff, use_last_n_layers, ...)
    meds_trainer:    adapter settings: prompt_key (TransferQueue field with the stable prompt id, default "index"),
                     correct_key (reward_extra_info key with correctness, default "acc"), memory_file
    actor_rollout_ref.meds: ${meds}   (workers receive only actor_rollout_ref)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meds_core.step.config import MEDSConfig

__all__ = ["TrainerSettings", "check_prompt_ids", "check_verl_config", "meds_config"]


def _plain(node: Any) -> dict:
    """An omegaconf node or a mapping -> plain dict (resolved)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with veRL
        pass
    return dict(node)


def meds_config(node: Mapping[str, Any] | None) -> MEDSConfig:
    """MEDSConfig from a ``meds:`` block (1:1 field names); unknown keys and invalid values raise ValueError."""
    if node is None:
        raise ValueError("the config has no `meds:` block; launch with meds_core.adapters.verl.main_meds (its "
                         "config/meds_trainer.yaml defines one).")
    try:
        return MEDSConfig.from_dict(_plain(node))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid `meds:` config: {exc}") from exc


@dataclass(frozen=True)
class TrainerSettings:
    """Adapter settings of the ``meds_trainer:`` block."""

    prompt_key: str = "index"  # TransferQueue field holding the dataset's stable prompt id (extra_info.index)
    correct_key: str = "acc"  # key of reward_extra_info holding correctness (bool or 1/0); fallback: score > 0
    memory_file: str = "meds_memory.bin"  # file name of the memory inside each global_step_* checkpoint folder

    @classmethod
    def from_node(cls, node: Mapping[str, Any] | None) -> TrainerSettings:
        d = _plain(node) if node is not None else {}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown meds_trainer key(s) {unknown}; valid keys are {sorted(known)}.")
        for k, v in d.items():
            if not isinstance(v, str) or not v:
                raise ValueError(f"meds_trainer.{k}={v!r} must be a non-empty string.")
        return cls(**d)


def _get(cfg: Any, path: str, default: Any = None) -> Any:
    node = cfg
    for part in path.split("."):
        if node is None:
            return default
        node = node.get(part, None) if hasattr(node, "get") else getattr(node, part, None)
    return default if node is None else node


def refuse_fused_kernels(enabled: Any) -> None:
    """Raise ValueError when veRL's fused kernels are on: they skip ``lm_head``'s forward, in which MEDS reads its
    features. The one check behind the start-up config check, the worker, the engine and each micro-batch."""
    if enabled:
        raise ValueError("MEDS reads its features in lm_head's forward, which fused kernels skip; set "
                         "actor_rollout_ref.model.use_fused_kernels=False.")


def check_verl_config(cfg: Any) -> MEDSConfig:
    """Everything MEDS needs from a composed veRL config, checked before Ray starts. Returns the MEDSConfig.

    Raises ValueError naming the setting and the fix: an unknown or invalid ``meds``/``meds_trainer`` entry, fused
    kernels (they skip ``lm_head``), rollout-correction bypass mode (no old-log-prob forward to capture in), a trainer
    other than the v1 sync one, a worker-side ``actor_rollout_ref.meds`` that differs from ``meds``, a non-FSDP
    strategy. (A model with fewer layers than ``layers_needed`` is refused by the worker when it installs the hooks.)
    """
    config = meds_config(_get(cfg, "meds"))
    TrainerSettings.from_node(_get(cfg, "meds_trainer"))
    refuse_fused_kernels(_get(cfg, "actor_rollout_ref.model.use_fused_kernels", False))
    if _get(cfg, "algorithm.rollout_correction.bypass_mode", False):
        raise ValueError("algorithm.rollout_correction.bypass_mode=True skips the old-log-prob forward in which MEDS "
                         "captures its features; set algorithm.rollout_correction.bypass_mode=False.")
    if not _get(cfg, "trainer.use_v1", False):
        raise ValueError("MEDS on veRL 0.9 runs on the v1 trainer; set trainer.use_v1=True.")
    mode = _get(cfg, "trainer.v1.trainer_mode", "sync")
    if mode != "sync":
        raise ValueError(f"trainer.v1.trainer_mode={mode!r}; MEDS supports 'sync' (its subclass of PPOTrainerSync is "
                         "selected by main_meds, not by the trainer_mode name). Set trainer.v1.trainer_mode=sync.")
    worker = _get(cfg, "actor_rollout_ref.meds")
    if worker is None or meds_config(worker) != config:
        raise ValueError("actor_rollout_ref.meds must mirror meds (workers only receive actor_rollout_ref); keep "
                         "`actor_rollout_ref: {meds: ${meds}}` from config/meds_trainer.yaml and override meds.* only.")
    strategy = _get(cfg, "actor_rollout_ref.actor.strategy", "fsdp")
    if strategy not in ("fsdp", "fsdp2"):
        raise ValueError(f"actor_rollout_ref.actor.strategy={strategy!r}; MEDS capture supports the FSDP engines "
                         "('fsdp', 'fsdp2').")
    return config


def check_prompt_ids(files: Any, prompt_key: str = "index") -> int:
    """Check, before Ray starts, that every training row carries the stable prompt id MEDS keys its memory on.

    With the default ``meds_trainer.prompt_key=index``, each row of each local parquet in ``files`` (a path or a
    list of paths, ``data.train_files``) must hold a distinct ``extra_info.index`` (``prepare_data.py`` writes one).
    Without it veRL fills 0 for every row and all prompts would share one memory. Remote paths (``hdfs://``...) are
    skipped. Returns the number of rows checked; raises ValueError naming the file, the rows and the fix.
    """
    import os

    if prompt_key != "index":
        return 0
    paths = [files] if isinstance(files, str) else list(files or [])
    checked = 0
    for path in paths:
        path = str(path)
        if "://" in path or not os.path.isfile(path):
            continue
        import pyarrow.parquet as pq

        fix = ("give each row a stable, distinct extra_info.index (prepare_data.py writes one), or set "
               "meds_trainer.prompt_key=raw_prompt to key the memory on the prompt text.")
        if "extra_info" not in pq.read_schema(path).names:
            raise ValueError(f"{path}: no extra_info column, so no stable prompt id for MEDS; {fix}")
        infos = pq.read_table(path, columns=["extra_info"]).column("extra_info").to_pylist()
        missing = [i for i, info in enumerate(infos) if not isinstance(info, dict) or info.get("index") is None]
        if missing:
            raise ValueError(f"{path}: {len(missing)} of {len(infos)} rows have no extra_info.index (first: row "
                             f"{missing[0]}); {fix}")
        ids = [info["index"] for info in infos]
        if len(set(map(str, ids))) != len(ids):
            raise ValueError(f"{path}: extra_info.index repeats ({len(ids) - len(set(map(str, ids)))} duplicates), "
                             f"so different prompts would share one MEDS memory; {fix}")
        checked += len(ids)
    return checked
