"""Per-example gradients through Opacus's hook machinery (its grad-sampler registry).

Opacus's own strict check rejects any trainable layer that owns buffers; our steerable
convolution owns the (constant, data-independent) sampled basis, so the check is done here
instead: refuse what mixes examples (BatchNorm and other running statistics) and any
trainable layer without a registered per-example rule.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.grad_sample.grad_sample_module import GradSampleModule as _GSM
from opacus.utils.module_utils import trainable_modules
from torch import nn

import eqdp_ray.privacy.grad_samplers  # noqa: F401  (registers our rules with Opacus)
from eqdp_ray.privacy.errors import UnsupportedModelError

_MIXING_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


def check_model_supports_dp(model: nn.Module) -> None:
    """Raise UnsupportedModelError, naming the layer, if DP-SGD cannot be applied to `model`."""
    for name, module in model.named_modules():
        tracks = getattr(module, "track_running_stats", False)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or (isinstance(module, _MIXING_LAYERS) and tracks):
            raise UnsupportedModelError(
                f"layer '{name}' is {type(module).__name__}: it normalises with statistics of the whole batch, "
                "so one example's gradient depends on the others and per-example clipping no longer bounds "
                "its influence. Replace it with torch.nn.GroupNorm (or eqdp_ray.models.layers.FieldGroupNorm)."
            )
    for name, module in trainable_modules(model):
        if type(module) not in _GSM.GRAD_SAMPLERS:
            raise UnsupportedModelError(
                f"layer '{name}' ({type(module).__name__}) has trainable parameters but no per-example gradient "
                "rule; register one with opacus.grad_sample.register_grad_sampler or freeze it"
            )


class PerExampleGradients:
    """Computes the gradient of each example's own loss for every trainable parameter."""

    def __init__(self, model: nn.Module) -> None:
        check_model_supports_dp(model)
        self.model = model
        self.wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
        self.parameters = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-example gradients, one (N, *param.shape) tensor per parameter, and the logits."""
        self.wrapped.zero_grad(set_to_none=True)
        logits = self.wrapped(inputs)
        with warnings.catch_warnings():
            # The first layer's input needs no gradient; Opacus's hook still sees what it needs.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            F.cross_entropy(logits, targets, reduction="sum").backward()
        grads = [p.grad_sample for p in self.parameters]
        self.wrapped.zero_grad(set_to_none=True)
        return grads, logits.detach()
