"""Losses: features in, a dict of named terms out (keys ending in `_loss` are summed by the module)."""

from lightning_modules.losses.base import LossInputs

__all__ = ["LossInputs"]
