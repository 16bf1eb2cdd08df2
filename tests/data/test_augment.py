"""Batched random crop + flip, and normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eqdp_ray.data import augment_batch, normalize


def _batch(n=64, c=3, h=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, h, generator=g)


def _reference(x, p, oy, ox, flip):
    """Per-image pad/crop/flip the slow, obvious way."""
    padded = F.pad(x[None], (p, p, p, p), mode="reflect")[0] if p else x
    out = padded[:, oy : oy + x.shape[1], ox : ox + x.shape[2]]
    return out.flip(-1) if flip else out


def test_shape_dtype_device_preserved():
    x = _batch()
    y = augment_batch(x, crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device


def test_no_padding_no_flip_is_identity():
    x = _batch()
    y = augment_batch(x, crop_padding=0, hflip=False)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_flip_only_flips_about_half_and_nothing_else():
    x = _batch(n=400)
    y = augment_batch(x, crop_padding=0, hflip=True, generator=torch.Generator().manual_seed(0))
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same | flipped)
    assert 150 < int(flipped.sum()) < 250


def test_seeded_generator_is_deterministic():
    x = _batch()
    a = augment_batch(x, crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(7))
    b = augment_batch(x, crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(7))
    c = augment_batch(x, crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_each_example_gets_its_own_crop():
    # The same image repeated: per-example randomness must give many different outputs.
    x = _batch(n=1).expand(64, -1, -1, -1).contiguous()
    y = augment_batch(x, crop_padding=4, hflip=False, generator=torch.Generator().manual_seed(0))
    distinct = {bytes(v.numpy().tobytes()) for v in y}
    assert len(distinct) > 20


def test_every_output_is_a_reflect_padded_crop():
    x = _batch(n=32, h=12)
    p = 3
    y = augment_batch(x, crop_padding=p, hflip=True, generator=torch.Generator().manual_seed(3))
    for i in range(len(x)):
        candidates = [
            _reference(x[i], p, oy, ox, flip)
            for oy in range(2 * p + 1)
            for ox in range(2 * p + 1)
            for flip in (False, True)
        ]
        assert any(torch.equal(y[i], cnd) for cnd in candidates), f"example {i} is not a crop"


def test_works_for_uint8_and_rejects_bad_padding():
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    y = augment_batch(x, crop_padding=2, hflip=False, generator=torch.Generator().manual_seed(0))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    with pytest.raises(ValueError, match="too large"):
        augment_batch(x.float(), crop_padding=8, hflip=False)
    with pytest.raises(ValueError, match="non-negative"):
        augment_batch(x.float(), crop_padding=-1, hflip=False)


def test_normalize_values_dtype_and_channels():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2).contiguous()
    y = normalize(x, (0.0, 0.2, 0.5), (1.0, 0.1, 0.5))
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    single = normalize(x[0], (0.0, 0.2, 0.5), (1.0, 0.1, 0.5))  # C,H,W also works
    assert torch.allclose(single, y[0])
    with pytest.raises(TypeError, match="uint8"):
        normalize(x.float(), (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ValueError, match="one per channel"):
        normalize(x, (0.5,), (0.5,))


def test_normalize_real_cifar_gives_zero_mean_unit_std(shared_data):
    from eqdp_ray.data import load_dataset

    ds = load_dataset("cifar10", shared_data, train_subset=5_000)
    y = normalize(ds.train_x, ds.mean, ds.std)
    m = y.mean(dim=(0, 2, 3))
    s = y.std(dim=(0, 2, 3))
    assert torch.allclose(m, torch.zeros(3), atol=0.05) and torch.allclose(s, torch.ones(3), atol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu_with_cpu_generator():
    x = _batch().cuda()
    y = augment_batch(x, crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(0))
    ref = augment_batch(x.cpu(), crop_padding=4, hflip=True, generator=torch.Generator().manual_seed(0))
    assert y.is_cuda and torch.equal(y.cpu(), ref)
    assert normalize((x * 255).to(torch.uint8), (0.5,) * 3, (0.5,) * 3).is_cuda


def test_keyed_uniforms_are_splitmix64_of_the_row_counters():
    from eqdp_ray.data.augment import keyed_uniforms

    # SplitMix64 from state 0: first output 0xE220A8397B1DCDAF, second 0x6E789E6AA1B965F4 (reference vectors)
    got = keyed_uniforms(0, torch.tensor([0]), 2)
    assert got.tolist() == [[(0xE220A8397B1DCDAF >> 11) * 2.0**-53, (0x6E789E6AA1B965F4 >> 11) * 2.0**-53]]
    rows = torch.tensor([7, 3, 123_456_789, 0])
    whole = keyed_uniforms(2**63 + 5, rows, 12)
    assert whole.dtype == torch.float64 and whole.shape == (4, 12)
    for i, row in enumerate(rows.tolist()):  # a row's numbers do not depend on the other rows asked for
        assert torch.equal(keyed_uniforms(2**63 + 5, torch.tensor([row]), 12)[0], whole[i])
    assert not torch.equal(keyed_uniforms(2**63 + 6, rows, 12), whole)
    with pytest.raises(ValueError, match="64-bit"):
        keyed_uniforms(-1, rows, 12)


def test_crop_flip_for_rows_is_uniform_and_per_row():
    from eqdp_ray.data import crop_flip_for_rows

    rows = torch.arange(20_000)
    params = crop_flip_for_rows(rows, 12345, 4, 2, True)
    assert params.shape == (20_000, 4, 3) and params.dtype == torch.int64
    for column, values in ((0, 5), (1, 5), (2, 2)):  # offsets 0..4 for padding 2, flips 0/1
        counts = torch.bincount(params[..., column].reshape(-1), minlength=values).double()
        assert len(counts) == values
        expected = params[..., column].numel() / values
        assert ((counts - expected).abs() < 5 * expected**0.5).all()  # within 5 sigma of uniform
    subset = rows.flip(0)[::7]  # any rows, any order: each gets what it gets in the whole
    assert torch.equal(crop_flip_for_rows(subset, 12345, 4, 2, True), params[subset])
    assert (crop_flip_for_rows(rows, 12345, 4, 2, False)[..., 2] == 0).all()
    assert (crop_flip_for_rows(rows, 12345, 4, 0, True)[..., :2] == 0).all()
