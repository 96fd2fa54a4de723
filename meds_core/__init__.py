"""meds_core: Memory-Enhanced Dynamic reward Shaping (MEDS) for RL on LLMs, framework-agnostic."""

from meds_core.step.answer import locate_answers
from meds_core.step.capture import FeatureCapture
from meds_core.step.config import MEDSConfig
from meds_core.step.features import extract_features
from meds_core.step.keys import stable_prompt_key
from meds_core.step.memory import ErrorMemory, MemoryFileError, StepResult
from meds_core.step.shaping import penalties, shape_rewards

__version__ = "0.1.0"

__all__ = [
    "ErrorMemory",
    "FeatureCapture",
    "MEDSConfig",
    "MemoryFileError",
    "StepResult",
    "__version__",
    "extract_features",
    "locate_answers",
    "penalties",
    "shape_rewards",
    "stable_prompt_key",
]
