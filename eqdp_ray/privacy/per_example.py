"""Per-example gradients with Opacus's grad-sampler registry and our own light hooks.

Opacus's own strict check rejects any trainable layer that owns buffers; our steerable
convolution owns the (constant, data-independent) sampled basis, so the check is done here
instead: refuse what mixes examples (BatchNorm and other running statistics) and any
trainable layer without a registered per-example rule.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from opacus.grad_sample.grad_sample_module import GradSampleModule as _GSM
from opacus.utils.module_utils import trainable_modules
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from eqdp_ray.privacy.clipping import PerExampleGradient
from eqdp_ray.privacy.errors import UnsupportedModelError
from eqdp_ray.privacy.ghost_norms import DEFERRED_RULES
from eqdp_ray.privacy.grad_samplers import (  # also registers our rules with Opacus
    AUGMENTATION_AWARE_RULES,
    FORWARD_STATISTICS,
    untimed_filter_gradient_routes,
)

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


def _formed_gradients(
    module: nn.Module, activations: list[torch.Tensor], backprops: torch.Tensor, k: int
) -> dict[nn.Parameter, torch.Tensor]:
    """The layer's per-example gradients, averaged over K: our rule where we have one, else Opacus's."""
    rule = AUGMENTATION_AWARE_RULES.get(type(module))
    if rule is not None:
        return rule(module, activations, backprops, k)
    grads = _GSM.GRAD_SAMPLERS[type(module)](module, activations, backprops)
    if k > 1:
        grads = {p: g.reshape(-1, k, *g.shape[1:]).mean(dim=1) for p, g in grads.items()}
    return grads


class PerExampleGradients:
    """Per-example gradients of every trainable parameter, averaged over each example's K inputs.

    A forward hook keeps each trainable layer's input and hooks its output's gradient, which hands
    both to the layer's rule: ours for steerable convolutions, field norms, nn.Conv2d, nn.GroupNorm
    and nn.Linear (they average over K inside the contraction; see grad_samplers.py), Opacus's
    registry for any other layer (averaged after). Backward asks autograd only for the gradient of
    the outputs of the first trainable layers (those whose input needs no gradient), so neither the
    summed parameter gradients of ordinary training, which DP-SGD would discard, nor the gradient
    of the images are computed: that is what keeps a DP step close to a non-private one. On the
    CPU, see ``eqdp_ray.train.memory.reuse_freed_memory`` (the train loop switches it on).
    `reproducible` chooses the filter-gradient routes by shape alone, not by timing them, so that the
    same inputs give the same gradients bit for bit in every run (a run with fixed seeds).
    """

    def __init__(self, model: nn.Module, reproducible: bool = False) -> None:
        check_model_supports_dp(model)
        self.model = model
        self.reproducible = reproducible
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self._active = False
        self._multiplicity = 1
        self._defer = False
        self._uses: dict[nn.Parameter, int] = {}  # this forward's uses of each parameter
        self._first_outputs: list[GradientEdge] = []
        self._grads: dict[nn.Parameter, PerExampleGradient] = {}
        self._handles = []
        for _, module in trainable_modules(model):
            self._handles.append(module.register_forward_hook(self._keep_input))

    def _keep_input(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        """Hook the layer's output gradient (a tensor hook: no extra autograd nodes), with this call's input.

        The input travels with the hook, not with the layer: a layer called twice in one forward (a shared
        encoder, a recurrent step) gets each call's gradient from that call's input.
        """
        if not self._active:
            return
        if not isinstance(output, torch.Tensor):
            raise UnsupportedModelError(f"{type(module).__name__} returns {type(output).__name__}, not one tensor")
        for p in module.parameters(recurse=False):
            self._uses[p] = self._uses.get(p, 0) + 1
        if output.requires_grad:
            activations = [t.detach() for t in inputs]  # emptied by the rule, so they are freed as backward goes
            statistics = FORWARD_STATISTICS.get(type(module))
            if statistics is not None:  # what the forward computed that the rule would otherwise recompute
                activations += statistics(module, output)
            output.register_hook(functools.partial(self._per_example_rule, module, activations))
            if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
                # Backward need go no further than this; the edge, not the tensor, in case it is later
                # modified in place.
                self._first_outputs.append(get_gradient_edge(output))

    def _per_example_rule(self, module: nn.Module, activations: list[torch.Tensor], grad_output: torch.Tensor) -> None:
        if not self._active:
            return
        activations, held = list(activations), activations
        held.clear()  # the hook stays on the graph until it is freed; the inputs need not
        backprops, k = grad_output.detach(), self._multiplicity
        # A parameter used more than once (a layer called twice, or shared by two layers) sums its uses'
        # per-example gradients, which only formed gradients can do.
        used_once = all(self._uses.get(p, 0) == 1 for p in module.parameters(recurse=False))
        deferred_rule = DEFERRED_RULES.get(type(module)) if self._defer and used_once else None
        grads = deferred_rule(module, activations, backprops, k) if deferred_rule is not None else None
        if grads is None:  # not deferred, or the layer's shape makes forming them cheaper
            grads = _formed_gradients(module, activations, backprops, k)
        for p, g in grads.items():
            self._grads[p] = g if p not in self._grads else self._grads[p] + g  # the sum over a parameter's uses

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, multiplicity: int = 1, defer: bool = False
    ) -> tuple[list[PerExampleGradient], torch.Tensor]:
        """Per-example gradients, one (N/K, *param.shape) tensor per parameter, and the logits.

        Rows of `inputs` are example-major: the K augmentations of an example are adjacent. With
        `defer`, a parameter whose norms and clipped sum are cheaper without forming its per-example
        gradients (``ghost_norms``) comes back as a DeferredGradient, which ``clip_and_sum`` takes.
        """
        if len(targets) % multiplicity:
            raise ValueError(
                f"{len(targets)} inputs are not a whole number of examples of {multiplicity} augmentations"
            )
        self._grads, self._multiplicity, self._defer, self._active = {}, multiplicity, defer, True
        routes = untimed_filter_gradient_routes() if self.reproducible else contextlib.nullcontext()
        try:
            with routes:
                logits = self.model(inputs.detach())
                if self._first_outputs:  # their hooks fire too; the gradients returned are not needed
                    loss = F.cross_entropy(logits, targets, reduction="sum")
                    torch.autograd.grad(loss, self._first_outputs, allow_unused=True)
        finally:
            self._active = False
            self._uses.clear()
            self._first_outputs.clear()
        n = len(targets) // multiplicity
        grads = [self._grads.pop(p, None) for p in self.parameters]
        grads = [
            torch.zeros(n, *p.shape, dtype=p.dtype, device=p.device) if g is None else g
            for p, g in zip(self.parameters, grads)
        ]  # a parameter the forward did not use
        return grads, logits.detach()

    def detach(self) -> None:
        """Remove the hooks from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
