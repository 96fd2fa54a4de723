"""Hydra config of the MEDS veRL recipe (``meds_trainer.yaml``), shipped as package data."""
