"""Per-example gradients with Opacus's grad-sampler registry and our own light hooks.

Opacus's own strict check rejects any trainable layer that owns buffers; our steerable
convolution owns the (constant, data-independent) sampled basis, so the check is done here
instead: refuse what mixes examples (BatchNorm and other running statistics) and any
trainable layer without a registered per-example rule.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from opacus.grad_sample.grad_sample_module import GradSampleModule as _GSM
from opacus.utils.module_utils import trainable_modules
from torch import nn

from eqdp_ray.privacy.clipping import PerExampleGradient
from eqdp_ray.privacy.errors import UnsupportedModelError
from eqdp_ray.privacy.ghost_norms import DEFERRED_RULES
from eqdp_ray.privacy.grad_samplers import AUGMENTATION_AWARE_RULES  # also registers our rules with Opacus

logger = logging.getLogger(__name__)

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


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_heap_reuse_enabled = False


def reuse_freed_memory() -> bool:
    """Serve large CPU tensors from glibc's heap and keep freed memory there; True if now in effect.

    glibc hands every allocation above 32 MiB to a fresh mmap and unmaps it on free, so each
    step's per-example gradients (hundreds of MiB for a conventional CNN), and the temporaries
    of clipping them, are page-faulted and zeroed by the kernel afresh: on the 2-core benchmark
    machine ~1 ms per MiB, as much as the contractions that fill them (docs/BENCHMARKS.md). With
    mmap off and trimming off, freed blocks are reused by the next step. Process-wide, and the
    process keeps its peak heap until it exits, which a training process does anyway; a no-op
    off glibc (macOS, musl).
    """
    global _heap_reuse_enabled
    if _heap_reuse_enabled:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    _heap_reuse_enabled = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
    logger.debug("glibc heap reuse for large allocations: %s", _heap_reuse_enabled)
    return _heap_reuse_enabled


class PerExampleGradients:
    """Per-example gradients of every trainable parameter, averaged over each example's K inputs.

    Forward hooks keep each trainable layer's input; backward hooks hand it, with the gradient
    of the layer's output, to the layer's rule: ours for steerable convolutions, field norms,
    nn.Conv2d, nn.GroupNorm and nn.Linear (they average over K inside the contraction; see
    grad_samplers.py), Opacus's registry for any other layer (averaged after). Backward asks autograd for the gradient of the *input* only,
    so the summed parameter gradients of ordinary training, which DP-SGD would discard, are
    never computed: that is what keeps a DP step close to a non-private one. A model with
    parameters on the CPU switches the process to ``reuse_freed_memory``.
    """

    def __init__(self, model: nn.Module) -> None:
        check_model_supports_dp(model)
        if any(p.device.type == "cpu" for p in model.parameters()):
            reuse_freed_memory()
        self.model = model
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self._active = False
        self._multiplicity = 1
        self._defer = False
        self._inputs: dict[nn.Module, list[torch.Tensor]] = {}
        self._grads: dict[nn.Parameter, PerExampleGradient] = {}
        self._handles = []
        for _, module in trainable_modules(model):
            self._handles.append(module.register_forward_hook(self._keep_input))
            self._handles.append(module.register_full_backward_hook(self._per_example_rule))

    def _keep_input(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if self._active:
            self._inputs[module] = [t.detach() for t in inputs]

    def _per_example_rule(self, module: nn.Module, grad_input: Any, grad_output: tuple[torch.Tensor, ...]) -> None:
        if not self._active:
            return
        activations, backprops, k = self._inputs.pop(module), grad_output[0].detach(), self._multiplicity
        deferred_rule = DEFERRED_RULES.get(type(module)) if self._defer else None
        rule = AUGMENTATION_AWARE_RULES.get(type(module))
        grads = deferred_rule(module, activations, backprops, k) if deferred_rule is not None else None
        if grads is None and rule is not None:
            grads = rule(module, activations, backprops, k)
        elif grads is None:
            grads = _GSM.GRAD_SAMPLERS[type(module)](module, activations, backprops)
            if k > 1:
                grads = {p: g.reshape(-1, k, *g.shape[1:]).mean(dim=1) for p, g in grads.items()}
        for p, g in grads.items():
            if p not in self._grads:
                self._grads[p] = g
            elif isinstance(g, torch.Tensor) and isinstance(self._grads[p], torch.Tensor):
                self._grads[p] = self._grads[p] + g  # a parameter shared by two layers
            else:
                raise UnsupportedModelError(
                    f"a parameter of shape {tuple(p.shape)} is shared by two layers; call without defer=True"
                )

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
        try:
            with warnings.catch_warnings():
                # Hooks fire although parameters get no summed gradient; that is the point.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                inputs = inputs.detach().requires_grad_(True)
                logits = self.model(inputs)
                torch.autograd.grad(F.cross_entropy(logits, targets, reduction="sum"), [inputs])
        finally:
            self._active = False
            self._inputs.clear()
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
