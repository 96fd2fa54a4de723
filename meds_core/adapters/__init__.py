"""Framework adapters, installed as ``meds_core.adapters`` (veRL and TRL subpackages import their framework lazily)."""
