"""Gradient canaries: placed once per coordinate, clipped like examples, observed after the noise."""

import torch

from eqdp_ray.privacy import GradientCanaries, _faults, add_gaussian_noise, clip_and_sum, noise_generator


def bound_canaries(included, params):
    canaries = GradientCanaries(included, coordinate_seed=5, norm_multiple=10.0)
    canaries.bind(sum(p.numel() for p in params), first_row=100, max_grad_norm=2.0)
    return canaries


def test_each_canary_is_a_dirac_of_ten_c_that_clipping_cuts_to_c():
    params = [torch.zeros(3, 4), torch.zeros(5)]
    canaries = bound_canaries([True] * 6, params)
    assert len(set(canaries.coordinates.tolist())) == 6  # distinct coordinates
    grads = canaries.gradients(torch.tensor([0, 4]), params)
    assert [g.shape for g in grads] == [(2, 3, 4), (2, 5)]
    flat = torch.cat([g.reshape(2, -1) for g in grads], dim=1)
    assert torch.equal(flat.abs().sum(1), torch.tensor([20.0, 20.0]))  # norm 10 C, one coordinate
    assert flat[0, canaries.coordinates[0]] == 20.0 and flat[1, canaries.coordinates[4]] == 20.0
    summed, norms = clip_and_sum(grads, max_norm=2.0)
    total = torch.cat([s.reshape(-1) for s in summed])
    assert torch.allclose(norms, torch.tensor([20.0, 20.0]))
    assert torch.allclose(total.norm(), torch.tensor(2.0 * 2**0.5), atol=1e-5)  # two canaries, each clipped to C


def test_canary_gradients_follow_each_parameter_and_come_in_bounded_batches(monkeypatch):
    from eqdp_ray.privacy import canaries as canaries_module

    params = [torch.zeros(2, 3, dtype=torch.float64), torch.zeros(4), torch.zeros(1, 5)]
    canaries = bound_canaries([True] * 12, params)
    ids = torch.arange(12)
    grads = canaries.gradients(ids, params)
    assert [(g.shape, g.dtype) for g in grads] == [
        ((12, 2, 3), torch.float64),
        ((12, 4), torch.float32),
        ((12, 1, 5), torch.float32),
    ]
    expected = torch.zeros(12, 15, dtype=torch.float64)  # the dense reference: row i is 20 at coordinate i
    expected[ids, canaries.coordinates] = 20.0
    assert torch.equal(torch.cat([g.reshape(12, -1).double() for g in grads], dim=1), expected)
    monkeypatch.setattr(canaries_module, "CHUNK", 5)
    batches = canaries.batches(ids)
    assert [len(b) for b in batches] == [5, 5, 2] and canaries.batches(ids[:0]) == ()
    whole, _ = clip_and_sum(grads, max_norm=2.0)
    in_batches = [torch.zeros_like(p) for p in params]
    for chunk in batches:  # distinct coordinates: the batched sum is the same numbers, exactly
        part, _ = clip_and_sum(canaries.gradients(chunk, params), max_norm=2.0)
        in_batches = [a + b for a, b in zip(in_batches, part)]
    assert all(torch.equal(a, b) for a, b in zip(whole, in_batches))


def test_only_canaries_in_the_data_set_are_kept_from_a_sampled_batch():
    canaries = bound_canaries([True, False, True], [torch.zeros(10)])
    real, ids = canaries.split_rows(torch.tensor([3, 99, 100, 101, 102]))
    assert real.tolist() == [True, True, False, False, False]
    assert ids.tolist() == [0, 2]  # row 101 is canary 1, whose coin said "out"


def test_scores_sum_the_coordinate_and_its_changes():
    params = [torch.zeros(8)]
    canaries = bound_canaries([True, True], params)
    c = canaries.coordinates
    for value in (1.0, 3.0, 2.0):
        step = torch.zeros(8)
        step[c[0]] = value
        canaries.observe([step])
    assert canaries.scores["sum"].tolist() == [6.0, 0.0]
    assert canaries.scores["abs_diff"].tolist() == [3.0, 0.0]  # |3-1| + |2-3|
    assert canaries.steps_observed == 3


def test_fault_hooks_change_noise_and_clipping_only_while_entered():
    zeros = [torch.zeros(1000)]
    with _faults._inject("no_noise"):
        assert torch.equal(add_gaussian_noise(zeros, 1.0, 1.0, noise_generator(1))[0], zeros[0])
    with _faults._inject("noise_scale", factor=0.1):
        assert abs(add_gaussian_noise(zeros, 1.0, 1.0, noise_generator(1))[0].std().item() - 0.1) < 0.01
    with _faults._inject("reused_noise"):
        first = add_gaussian_noise(zeros, 1.0, 1.0, noise_generator(1))[0]
        assert torch.equal(add_gaussian_noise(zeros, 1.0, 1.0, noise_generator(2))[0], first)
    with _faults._inject("no_clipping"):
        summed, _ = clip_and_sum([torch.full((1, 4), 10.0)], max_norm=1.0)
        assert summed[0].norm() > 19
    fresh = add_gaussian_noise(zeros, 1.0, 1.0, noise_generator(2))[0]
    assert abs(fresh.std().item() - 1.0) < 0.1 and not torch.equal(fresh, first)
    assert clip_and_sum([torch.full((1, 4), 10.0)], max_norm=1.0)[0][0].norm() <= 1.0
