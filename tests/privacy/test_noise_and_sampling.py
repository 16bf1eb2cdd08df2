import math

import torch

from eqdp_ray.privacy import PoissonSampler, add_gaussian_noise, noise_generator, secure_seed


def test_noise_has_std_sigma_times_c_and_mean_zero():
    summed = [torch.zeros(200, 300), torch.zeros(40000)]
    noisy = add_gaussian_noise(summed, noise_multiplier=1.5, max_norm=2.0, generator=noise_generator(3))
    draw = torch.cat([t.flatten() for t in noisy]).double()
    n = draw.numel()
    assert abs(draw.mean().item()) < 5 * 3.0 / math.sqrt(n)
    assert abs(draw.std().item() - 3.0) < 0.02
    # one draw per step: same seed gives the same draw, and it is added to the input, not replacing it
    again = add_gaussian_noise([torch.ones(200, 300), torch.ones(40000)], 1.5, 2.0, noise_generator(3))
    torch.testing.assert_close(again[0] - 1, noisy[0])


def test_noise_is_never_zero_and_differs_between_steps():
    gen = noise_generator(5)
    first = add_gaussian_noise([torch.zeros(1000)], 1.0, 1.0, gen)[0]
    second = add_gaussian_noise([torch.zeros(1000)], 1.0, 1.0, gen)[0]
    assert first.abs().sum() > 0 and not torch.equal(first, second)


def test_the_draw_in_blocks_is_one_gaussian_the_same_for_any_thread_count(monkeypatch):
    """Blocks drawn on several cores: the same numbers for 1 or 2 threads (ranks on different machines
    must add the very same draw), no block repeating another, and N(0, std^2) as a whole."""
    from eqdp_ray.privacy import noise

    monkeypatch.setattr(noise, "DRAW_BLOCK", 1000)
    monkeypatch.setattr(noise, "_draw_pool", None)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = noise.gaussian_draw(20500, 2.0, noise_generator(7))
        monkeypatch.setattr(noise, "_draw_pool", None)
        torch.set_num_threads(2)
        two = noise.gaussian_draw(20500, 2.0, noise_generator(7))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    blocks = one[:20000].view(20, 1000)
    correlations = torch.corrcoef(blocks) - torch.eye(20, dtype=torch.float64)
    assert correlations.abs().max() < 5 / math.sqrt(1000)  # independent blocks, not one stream repeated
    assert abs(one.std().item() - 2.0) < 0.05 and abs(one.mean().item()) < 5 * 2.0 / math.sqrt(20500)
    assert not torch.equal(one, noise.gaussian_draw(20500, 2.0, noise_generator(8)))


def test_a_large_draw_is_normal_with_std_sigma_c():
    """The whole of a multi-block draw passes a Kolmogorov-Smirnov test against N(0, std^2)."""
    from scipy import stats

    from eqdp_ray.privacy import noise

    draw = noise.gaussian_draw(3 * noise.DRAW_BLOCK + 17, 3.0, noise_generator(11))
    assert draw.dtype == torch.float64 and torch.isfinite(draw).all()
    assert stats.kstest(draw.numpy() / 3.0, "norm").pvalue > 1e-3
    tiny = noise.gaussian_draw(5, 3.0, noise_generator(11))  # one block, drawn in this thread
    assert tiny.shape == (5,) and torch.equal(tiny, noise.gaussian_draw(5, 3.0, noise_generator(11)))


def test_secure_seed_is_fresh():
    assert len({secure_seed() for _ in range(20)}) == 20


def test_poisson_sampler_rate_and_independence():
    gen = noise_generator(0)
    sampler = PoissonSampler(10000, 0.05, gen)
    sizes = torch.tensor([len(sampler.sample_global()) for _ in range(200)], dtype=torch.float64)
    # Binomial(10000, 0.05): mean 500, std ~21.8; batch size is random, not fixed
    assert abs(sizes.mean().item() - 500) < 5 * 21.8 / math.sqrt(200)
    assert 15 < sizes.std().item() < 30
    assert sampler.expected_batch_size == 500


def test_shards_partition_the_global_batch():
    batch = PoissonSampler(1000, 0.3, noise_generator(1)).sample_global()
    shards = [PoissonSampler(1000, 0.3, noise_generator(1), rank=r, world_size=3).shard(batch) for r in range(3)]
    joined = torch.sort(torch.cat(shards)).values
    assert torch.equal(joined, batch)
    assert all(len(set(a.tolist()) & set(b.tolist())) == 0 for a in shards for b in shards if a is not b)
