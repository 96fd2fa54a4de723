"""The TRL versions this adapter supports, checked before anything from TRL is used."""

from __future__ import annotations

import re

SUPPORTED_TRL = ">=1.16,<1.17"
_LOW, _HIGH = (1, 16), (1, 17)


def check_trl_version(version: str | None = None) -> str:
    """Return the installed (or given) TRL version; raise if it is outside :data:`SUPPORTED_TRL`.

    Raises:
        ImportError: TRL is not installed.
        RuntimeError: the version is unsupported (the private ``GRPOTrainer`` methods the adapter overrides,
            ``_calculate_rewards`` and ``_get_per_token_logps_and_entropies``, change between releases).
    """
    if version is None:
        try:
            import trl
        except ImportError as e:
            raise ImportError("meds_core.adapters.trl needs TRL: pip install 'meds_core[trl]' "
                              f"(trl{SUPPORTED_TRL}).") from e
        version = trl.__version__
    m = re.match(r"(\d+)\.(\d+)", str(version))
    if m is None or not (_LOW <= (int(m.group(1)), int(m.group(2))) < _HIGH):
        raise RuntimeError(f"trl {version} is installed, but meds_core.adapters.trl supports trl{SUPPORTED_TRL} "
                           f"only; install a supported release: pip install 'trl{SUPPORTED_TRL}'.")
    return str(version)
