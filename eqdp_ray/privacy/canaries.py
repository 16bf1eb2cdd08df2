"""White-box gradient canaries for the one-run audit (Steinke, Nasr & Jagielski 2023, section 6).

Each canary is an extra training example whose per-example gradient the auditor chooses: a
Dirac vector, `norm` in one coordinate of the flattened trainable parameters (one distinct
coordinate per canary), whatever the model. A canary is in the data set if its fair coin says
so; it is then Poisson-sampled at rate q like every other example, and its gradient goes
through the same clipping, sum, all-reduce and noise as theirs. Its raw norm is chosen above
the clipping norm C, so that clipping has something to cut: a run that forgets to clip lets a
canary through at full size.

The auditor sees every step's noised gradient sum on every rank (the strongest white-box
view: any rank's model may be released, and the model updates are these sums up to the
learning rate and momentum) and scores each canary from its coordinate:

- `sum`: the sum over steps, which grows by C each time the canary is sampled;
- `abs_diff`: the sum over steps of the absolute change from one step to the next, which
  separates members when the same noise is (wrongly) added at every step, since the noise
  then cancels in the differences.

The coins and the scores stay with the auditor; nothing here is written by a real run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from eqdp_ray.privacy.errors import PrivacyError

SCORES = ("sum", "abs_diff")
CHUNK = 32  # canaries whose dense gradients exist at once: 32 x 2.4M float32 = 315 MB for ResNet-9 GN


class GradientCanaries:
    """m Dirac gradient canaries, their inclusion coins, and the auditor's per-coordinate view."""

    def __init__(self, included: Sequence[bool], *, coordinate_seed: int = 0, norm_multiple: float = 10.0) -> None:
        if len(included) == 0:
            raise PrivacyError("an audit needs at least one canary")
        if norm_multiple <= 0:
            raise PrivacyError(f"the canary norm multiple must be > 0, got {norm_multiple}")
        self.included = torch.as_tensor(list(included), dtype=torch.bool)
        self.coordinate_seed = coordinate_seed
        self.norm_multiple = norm_multiple
        self.coordinates: torch.Tensor | None = None
        self.first_row = 0
        self.norm = 0.0
        self._previous: torch.Tensor | None = None
        self.scores = {name: torch.zeros(len(self.included), dtype=torch.float64) for name in SCORES}
        self.steps_observed = 0

    @property
    def count(self) -> int:
        return len(self.included)

    def to_payload(self) -> dict[str, Any]:
        """What a Ray Train worker needs to insert the same canaries (the coins decide the data set)."""
        return {
            "included": self.included.tolist(),
            "coordinate_seed": self.coordinate_seed,
            "norm_multiple": self.norm_multiple,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> GradientCanaries:
        return cls(
            payload["included"], coordinate_seed=payload["coordinate_seed"], norm_multiple=payload["norm_multiple"]
        )

    def bind(self, num_parameters: int, first_row: int, max_grad_norm: float) -> None:
        """Place the canaries: coordinates drawn from a public seed, rows after the real examples."""
        if self.count > num_parameters:
            raise PrivacyError(
                f"{self.count} canaries need as many distinct coordinates but the model has {num_parameters} "
                "trainable parameters; use fewer canaries"
            )
        generator = torch.Generator().manual_seed(self.coordinate_seed)
        self.coordinates = torch.randperm(num_parameters, generator=generator)[: self.count]
        self.first_row = first_row
        self.norm = self.norm_multiple * max_grad_norm

    def split_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled rows -> (mask of real examples, ids of the sampled canaries that are in the data set)."""
        real = rows < self.first_row
        ids = rows[~real] - self.first_row
        return real, ids[self.included[ids]]

    def gradients(self, ids: torch.Tensor, parameters: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-example gradients of the canaries `ids`, shaped like PerExampleGradients' output.

        Built on each parameter's device and in its dtype, with no dense float64 copy: the caller
        takes them in `batches` of CHUNK canaries, so memory stays CHUNK x parameters whatever
        the number of canaries sampled in a step."""
        assert self.coordinates is not None, "bind() first"
        coordinates = self.coordinates[ids]
        rows = torch.arange(len(ids))
        out, offset = [], 0
        for p in parameters:
            block = torch.zeros(len(ids), p.numel(), dtype=p.dtype, device=p.device)
            inside = (coordinates >= offset) & (coordinates < offset + p.numel())
            block[rows[inside].to(p.device), (coordinates[inside] - offset).to(p.device)] = self.norm
            out.append(block.reshape(len(ids), *p.shape))
            offset += p.numel()
        return out

    def batches(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The sampled canaries in groups of at most CHUNK, each clipped and summed on its own."""
        return ids.split(CHUNK) if len(ids) else ()

    @torch.no_grad()
    def observe(self, noisy_sum: Sequence[torch.Tensor]) -> None:
        """The auditor's view of one step: the noised gradient sum at the canaries' coordinates."""
        assert self.coordinates is not None, "bind() first"
        flat = torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in noisy_sum])
        seen = flat[self.coordinates]
        self.scores["sum"] += seen
        if self._previous is not None:
            self.scores["abs_diff"] += (seen - self._previous).abs()
        self._previous = seen
        self.steps_observed += 1

    def score_matrix(self) -> torch.Tensor:
        """(len(SCORES), m): this rank's scores."""
        return torch.stack([self.scores[name] for name in SCORES])
