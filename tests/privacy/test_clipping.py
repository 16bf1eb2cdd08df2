import torch

from eqdp_ray.privacy import average_augmentations, clip_and_sum, clip_factors, per_example_norms


def test_every_clipped_norm_is_at_most_c():
    torch.manual_seed(0)
    grads = [torch.randn(50, 3, 4) * torch.logspace(-3, 3, 50)[:, None, None], torch.randn(50, 7)]
    norms = per_example_norms(grads)
    factors = clip_factors(norms, 2.0)
    clipped = [g * factors.view(-1, *([1] * (g.dim() - 1))) for g in grads]
    clipped_norms = per_example_norms(clipped)
    assert (clipped_norms <= 2.0 + 1e-9).all()
    small = norms < 2.0
    assert small.any() and (~small).any()
    torch.testing.assert_close(clipped_norms[small], norms[small])  # small gradients untouched
    torch.testing.assert_close(clipped_norms[~small], torch.full_like(norms[~small], 2.0), rtol=1e-5, atol=1e-5)


def test_clip_and_sum_equals_sum_of_clipped_examples():
    torch.manual_seed(1)
    grads = [torch.randn(6, 5) * 10, torch.randn(6, 2, 2)]
    summed, norms = clip_and_sum(grads, 1.0, multiplicity=1)
    factors = clip_factors(norms, 1.0)
    for s, g in zip(summed, grads):
        torch.testing.assert_close(s, (g * factors.view(-1, *([1] * (g.dim() - 1)))).sum(0))
    # sensitivity: the whole sum moves by at most C when one example is removed
    summed_without, _ = clip_and_sum([g[1:] for g in grads], 1.0)
    diff = torch.cat([(a - b).flatten() for a, b in zip(summed, summed_without)]).norm()
    assert diff <= 1.0 + 1e-6


def test_augmentations_are_averaged_before_clipping():
    # two examples, K=3 augmentations each, example-major rows
    grads = [torch.tensor([[3.0], [3.0], [3.0], [0.1], [0.2], [0.3]])]
    averaged = average_augmentations(grads, 3)
    torch.testing.assert_close(averaged[0], torch.tensor([[3.0], [0.2]]))
    summed, norms = clip_and_sum(grads, 1.0, multiplicity=3)
    torch.testing.assert_close(norms, torch.tensor([3.0, 0.2]))
    # example 0 clipped once as a whole (to 1), not each augmentation separately
    torch.testing.assert_close(summed[0], torch.tensor([1.0 + 0.2]), rtol=1e-5, atol=1e-5)


def test_the_blocked_clipped_sum_of_large_parameters_equals_a_loop_over_examples():
    # parameters large enough for the blocked product (whole blocks, and whole blocks plus a remainder)
    from eqdp_ray.privacy.clipping import WEIGHTED_SUM_BLOCK

    torch.manual_seed(2)
    grads = [torch.randn(5, 2 * WEIGHTED_SUM_BLOCK + 123), torch.randn(5, 3, WEIGHTED_SUM_BLOCK), torch.randn(5, 9)]
    summed, norms = clip_and_sum(grads, 1.0)
    factors = clip_factors(norms, 1.0).double()
    for s, g in zip(summed, grads):
        expected = sum(factors[i] * g[i].double() for i in range(len(g)))
        assert s.shape == g.shape[1:] and s.dtype == g.dtype
        torch.testing.assert_close(s.double(), expected, rtol=1e-5, atol=1e-6)
