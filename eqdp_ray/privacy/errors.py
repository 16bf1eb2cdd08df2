"""Errors of the privacy layer: each says what the user should change."""

from eqdp_ray.config.errors import UserError


class PrivacyError(UserError, ValueError):
    """A model, budget or setting that would make the privacy guarantee wrong or unattainable."""


class PrivacyBudgetError(PrivacyError):
    """No noise multiplier meets the requested (epsilon, delta) for this sampler and step count."""


class UnsupportedModelError(PrivacyError):
    """A model whose per-example gradients cannot be computed, or that mixes examples (BatchNorm)."""
