"""One real DP-SGD step's sensitivity to adding one training example, with augmentation on.

The subsampled-Gaussian analysis assumes that, for the same sampled batch, adding an example z
changes the clipped sum by at most C. That holds only if the other examples are augmented the same
way whether z is there or not: their crops and flips must not depend on z's presence.
"""

from dataclasses import replace

import pytest
import torch

from eqdp_ray.config import parse_config
from eqdp_ray.data import crop_flip_for_rows, load_dataset
from eqdp_ray.privacy import PoissonSampler, noise_generator
from eqdp_ray.privacy._faults import _inject
from eqdp_ray.train.comm import LocalComm
from eqdp_ray.train.loop import augmentations_of, derive_seed, dp_sgd_step, setup_run

C = 1.0
BATCH = 32


def config(secret: int, augmult: int):
    return parse_config(
        {
            "name": "sensitivity",
            "seed": 0,
            "data": {"name": "digits", "val_size": 0.1},
            "model": {"name": "resnet9", "options": {"width": 0.125, "num_groups": 2}},
            "privacy": {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": C, "secret_seed": secret},
            "training": {
                "batch_size": BATCH,
                "steps": 1,
                "augmult": augmult,
                "crop_padding": 1,
                "hflip": True,
                "lr": 1.0,
                "momentum": 0.0,
                "ema_decay": None,
                "physical_batch_size": 40,
            },
        }
    )


def clipped_sum_of_one_step(secret: int, augmult: int, data) -> list[torch.Tensor]:
    """The step's clipped sum, read off an SGD step with lr 1 and the noise switched off."""
    run = setup_run(config(secret, augmult), LocalComm(), None, data)
    before = [p.detach().clone() for p in run.state.model.parameters()]
    with _inject("no_noise"):
        dp_sgd_step(run)
    scale = run.sampler.expected_batch_size  # the step divides the noisy sum by the expected batch size
    return [(b - a.detach()) * scale for b, a in zip(before, run.state.model.parameters())]


def secret_sampling_alike(n: int) -> int:
    """A secret whose first step samples the same examples of D in D and D + z, and z too."""
    for secret in range(5000):
        seed = derive_seed(secret, "sample", 0)
        in_d = PoissonSampler(n, BATCH / n, noise_generator(seed)).sample_global()
        in_d_plus_z = PoissonSampler(n + 1, BATCH / (n + 1), noise_generator(seed)).sample_global()
        if n in in_d_plus_z.tolist() and torch.equal(in_d, in_d_plus_z[in_d_plus_z != n]):
            return secret
    raise AssertionError("no such secret among the first 5000")


@pytest.mark.parametrize("augmult", [1, 2])
def test_adding_one_example_moves_the_clipped_sum_by_at_most_the_clip_norm(augmult):
    data = load_dataset("digits", val_size=0.1, seed=0)
    z = slice(0, 1)  # a validation example becomes the added training example
    with_z = replace(
        data, train_x=torch.cat([data.train_x, data.val_x[z]]), train_y=torch.cat([data.train_y, data.val_y[z]])
    )
    secret = secret_sampling_alike(len(data.train_y))
    without, added = clipped_sum_of_one_step(secret, augmult, data), clipped_sum_of_one_step(secret, augmult, with_z)
    change = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(added, without))).item()
    assert 0.5 * C < change <= C * (1 + 1e-4)  # z's own clipped gradient, and nothing else


def test_augmentation_is_drawn_from_the_secret_not_the_public_seed():
    data = load_dataset("digits", val_size=0.1, seed=0)
    rows = torch.arange(len(data.train_y))
    drawn = {}
    for secret in (1, 2):
        run = setup_run(config(secret, 2), LocalComm(), None, data)
        with _inject("no_noise"):
            dp_sgd_step(run)  # step 1 now
        drawn[secret] = augmentations_of(rows, run, 2, 1)
        key = derive_seed(secret, "augment", 1)
        assert torch.equal(drawn[secret], crop_flip_for_rows(rows, key, 2, 1, run.hflip))
    assert not torch.equal(drawn[1], drawn[2])
