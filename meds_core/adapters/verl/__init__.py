"""MEDS on veRL 0.9 (``meds_core.adapters.verl``): worker and v1-trainer subclasses, hydra config, entry point.

Importing this package does not import veRL. The veRL-bound modules check the version when imported:
``.worker`` (MEDSActorRolloutRefWorker), ``.trainer`` (MEDSTrainerSync), ``.main_meds`` (entry point),
``.engine_capture`` (capture inside the engine forward).
"""

from meds_core.adapters.verl.positions import answer_from_end, packed_rows, padded_rows, ulysses_local_rows
from meds_core.adapters.verl.settings import TrainerSettings, check_verl_config, meds_config

__all__ = [
    "TrainerSettings",
    "answer_from_end",
    "check_verl_config",
    "meds_config",
    "packed_rows",
    "padded_rows",
    "ulysses_local_rows",
]
