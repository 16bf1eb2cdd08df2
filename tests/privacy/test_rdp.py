"""RDP curves and their conversion, against Opacus and Google's dp_accounting (independent code)."""

import numpy as np
import pytest
from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent, SelfComposedDpEvent
from dp_accounting.rdp import RdpAccountant
from opacus.accountants.analysis.rdp import compute_rdp

from eqdp_ray.privacy.rdp import ORDERS, gaussian_rdp, rdp_to_delta, rdp_to_epsilon, subsampled_gaussian_rdp


@pytest.mark.parametrize("sigma,q,steps", [(0.8, 0.05, 300), (2.0, 0.18, 2160), (10.0, 0.01, 5), (0.6, 0.5, 10)])
def test_subsampled_gaussian_matches_opacus_and_dp_accounting(sigma, q, steps):
    ours = subsampled_gaussian_rdp(sigma, q, steps)
    opacus = np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(ORDERS)))
    acc = RdpAccountant(orders=ORDERS)
    acc.compose(SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps))
    np.testing.assert_allclose(ours, opacus, rtol=1e-9)
    np.testing.assert_allclose(ours, acc._rdp, rtol=1e-9)


def test_gaussian_release_is_the_q_equals_one_case():
    np.testing.assert_allclose(gaussian_rdp(5.0, 7), 7 * np.asarray(ORDERS) / 50.0)
    np.testing.assert_allclose(subsampled_gaussian_rdp(5.0, 1.0, 7), gaussian_rdp(5.0, 7))
    assert np.all(gaussian_rdp(5.0, 0) == 0) and np.all(subsampled_gaussian_rdp(1.0, 0.1, 0) == 0)


@pytest.mark.parametrize("delta", [1e-5, 1e-8])
def test_conversion_matches_dp_accounting_and_inverts(delta):
    acc = RdpAccountant(orders=ORDERS)
    acc.compose(SelfComposedDpEvent(PoissonSampledDpEvent(0.02, GaussianDpEvent(1.1)), 1000))
    curve = subsampled_gaussian_rdp(1.1, 0.02, 1000)
    eps, order = rdp_to_epsilon(curve, delta)
    assert eps == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
    assert order in ORDERS
    assert rdp_to_delta(curve, eps) == pytest.approx(delta, rel=1e-6)
    assert rdp_to_delta(curve, eps * 1.1) < delta < rdp_to_delta(curve, eps * 0.9)


@pytest.mark.parametrize("sigma,q,steps", [(1.4, 0.08, 400), (6.0, 0.18, 2160)])
def test_integer_orders_lose_little_against_dp_accountings_default_orders(sigma, q, steps):
    """At the epsilons a search reaches (about 2-8), integer orders cost well under 1%; never a lower epsilon."""
    acc = RdpAccountant()  # its default orders include fractional ones
    acc.compose(SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps))
    ours = rdp_to_epsilon(subsampled_gaussian_rdp(sigma, q, steps), 1e-5)[0]
    assert 1 < ours < 10
    assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=0.01) and ours >= acc.get_epsilon(1e-5) - 1e-9
