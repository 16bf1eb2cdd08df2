"""Test-only fault injection into the mechanism, so that tests can check the audit catches it.

Private on purpose: no config key, CLI flag or environment variable reaches it; only code that
imports this module and enters `_inject` (tests, or a Ray worker set-up hook that a test
installs) can turn a fault on. Each fault breaks one promise of DP-SGD:

- "no_noise": the noise draw is left out;
- "noise_scale": the noise is multiplied by `factor` (e.g. 0.1);
- "no_clipping": every clip factor is 1;
- "noise_missing_on_rank": the rank `rank` of a distributed run adds no noise;
- "reused_noise": the first step's draw is added again at every later step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

FAULTS = ("no_noise", "noise_scale", "no_clipping", "noise_missing_on_rank", "reused_noise")

_active: dict[str, dict[str, Any]] = {}


def _enable(name: str, **params: Any) -> None:
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}: one of {', '.join(FAULTS)}")
    _active[name] = dict(params)


def _disable() -> None:
    _active.clear()


@contextlib.contextmanager
def _inject(name: str, **params: Any) -> Iterator[None]:
    _enable(name, **params)
    try:
        yield
    finally:
        _disable()


def _fault(name: str) -> dict[str, Any] | None:
    """The parameters of fault `name` if it is on (checked by clipping and noise), else None."""
    return _active.get(name)


def _current_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
