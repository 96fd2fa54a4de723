"""The veRL version gate: the adapter overrides private methods of veRL 0.9's v1 trainer and engine workers."""

from __future__ import annotations

SUPPORTED = ((0, 9), (0, 10))  # [low, high)
INSTALL = 'pip install "meds_core[verl]"  (verl[verl-core,math]>=0.9.1,<0.10)'


def _release(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (-1, -1)


def require_verl() -> str:
    """Import veRL and check ``0.9 <= version < 0.10``; returns the version. ImportError with the fix otherwise."""
    try:
        import verl
    except ImportError as exc:
        raise ImportError(f"meds_core.adapters.verl needs veRL 0.9.x, which is not installed; run: {INSTALL}") \
            from exc
    version = getattr(verl, "__version__", "unknown")
    lo, hi = SUPPORTED
    if not (lo <= _release(version) < hi):
        raise ImportError(f"meds_core.adapters.verl supports veRL >=0.9,<0.10 (v1 trainer, engine workers); found "
                          f"verl {version}. Run: {INSTALL}")
    return version
