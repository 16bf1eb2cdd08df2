"""One group-count rule for every model's normalisation (it used to differ between baselines and
the equivariant model: largest divisor below the request vs the reference's rule)."""

import pytest
from torch import nn

from eqdp_ray.models import ResNet9
from eqdp_ray.models.layers import FieldGroupNorm
from eqdp_ray.models.norm_groups import norm_group_count


def test_the_reference_rule():
    assert norm_group_count(16, 8) == 8  # a divisor is kept
    assert norm_group_count(27, 8) == 3  # closest divisor leaving more than 3 per group (9 would leave 3)
    assert norm_group_count(13, 8) == 1  # none: one group
    with pytest.raises(ValueError, match="num_groups must be >= 1"):
        norm_group_count(8, 0)


def test_every_norm_layer_follows_it():
    # 19, 38, 77 channels asked for 32 groups: the old baseline rule gave 19, 19 and 11 groups
    # (groups of one or two channels); the shared rule gives 1, 2 and 11
    groups = {
        m.num_channels: m.num_groups for m in ResNet9(width=0.3, num_groups=32).modules() if isinstance(m, nn.GroupNorm)
    }
    assert all(g == norm_group_count(c, 32) for c, g in groups.items())
    assert groups[19] == 1 and groups[38] == 2 and groups[77] == 11
    assert FieldGroupNorm(num_fields=10, field_size=8, num_groups=8).num_groups == 2  # was 5 (largest divisor <= 8)
