import pytest
from opacus.accountants import RDPAccountant

from eqdp_ray.privacy import PrivacyBudgetError, epsilon_spent, plan_privacy


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("eps", [1.0, 8.0])
def test_spent_epsilon_never_exceeds_target_and_is_tight(accountant, eps):
    plan = plan_privacy(eps, 1e-5, 8192 / 45000, 2160, accountant)
    assert plan.epsilon <= eps
    assert plan.epsilon > 0.98 * eps  # not wastefully noisy
    assert plan.epsilon == pytest.approx(epsilon_spent(plan.noise_multiplier, 8192 / 45000, 2160, 1e-5, accountant))


def test_accountant_models_the_sampler_that_runs():
    # The reference code accounts q=0.164 but samples q=1/6 and overshoots; we account the true q.
    plan = plan_privacy(8.0, 1e-5, 1 / 6, 2160)
    acc = RDPAccountant()
    for _ in range(2160):
        acc.step(noise_multiplier=plan.noise_multiplier, sample_rate=1 / 6)
    assert acc.get_epsilon(1e-5) <= 8.0
    wrong = epsilon_spent(plan_privacy(8.0, 1e-5, 0.164, 2160).noise_multiplier, 1 / 6, 2160, 1e-5)
    assert wrong > 8.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(target_epsilon=0.0), "epsilon"),
        (dict(target_epsilon=-1.0), "epsilon"),
        (dict(delta=1.0), "delta"),
        (dict(delta=0.0), "delta"),
        (dict(sample_rate=1.5), "sample rate"),
        (dict(accountant="gdp2"), "accountant"),
        (dict(target_epsilon=1e-6, sample_rate=1.0, steps=100000), "no noise multiplier"),
    ],
)
def test_impossible_budgets_fail_clearly(kwargs, match):
    args = dict(target_epsilon=8.0, delta=1e-5, sample_rate=0.01, steps=100, accountant="rdp") | kwargs
    with pytest.raises(PrivacyBudgetError, match=match):
        plan_privacy(**args)


def test_a_delta_of_one_over_n_or_more_is_refused():
    from eqdp_ray.privacy import check_delta_for_size

    check_delta_for_size(1e-5, 50_000)
    with pytest.raises(PrivacyBudgetError, match=r"not below 1/N = 0\.01 for the 100 training"):
        check_delta_for_size(0.01, 100)
