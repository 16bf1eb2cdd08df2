"""The privacy-critical core: per-example gradients, clipping, noise, sampling, accounting of a run and of a
search, the audit's bound."""

from eqdp_ray.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyPlan,
    check_delta_for_size,
    epsilon_spent,
    plan_fixed_noise,
    plan_privacy,
)
from eqdp_ray.privacy.audit_bound import (
    AuditBound,
    audit_from_score_sets,
    audit_from_scores,
    epsilon_lower_bound,
    one_run_p_value,
)
from eqdp_ray.privacy.canaries import GradientCanaries
from eqdp_ray.privacy.clipping import average_augmentations, clip_and_sum, clip_factors, per_example_norms
from eqdp_ray.privacy.epsilon_format import format_epsilon, format_lower_bound
from eqdp_ray.privacy.errors import PrivacyBudgetError, PrivacyError, UnsupportedModelError
from eqdp_ray.privacy.noise import add_gaussian_noise, noise_generator, noisy_accuracy, secure_seed
from eqdp_ray.privacy.per_example import PerExampleGradients, check_model_supports_dp
from eqdp_ray.privacy.rdp import ORDERS, gaussian_rdp, rdp_to_epsilon, subsampled_gaussian_rdp
from eqdp_ray.privacy.sampling import PoissonSampler
from eqdp_ray.privacy.search import (
    COMPOSITION,
    PAPERNOT_STEINKE,
    SearchLedger,
    SearchPlan,
    TrialMechanism,
    TrialShape,
    compose,
    composition_epsilon,
    plan_search,
)

__all__ = [
    "ACCOUNTANTS",
    "PrivacyPlan",
    "epsilon_spent",
    "plan_privacy",
    "plan_fixed_noise",
    "AuditBound",
    "audit_from_score_sets",
    "audit_from_scores",
    "epsilon_lower_bound",
    "one_run_p_value",
    "GradientCanaries",
    "format_epsilon",
    "format_lower_bound",
    "average_augmentations",
    "clip_and_sum",
    "clip_factors",
    "per_example_norms",
    "PrivacyBudgetError",
    "check_delta_for_size",
    "PrivacyError",
    "UnsupportedModelError",
    "add_gaussian_noise",
    "noisy_accuracy",
    "ORDERS",
    "gaussian_rdp",
    "rdp_to_epsilon",
    "subsampled_gaussian_rdp",
    "COMPOSITION",
    "PAPERNOT_STEINKE",
    "SearchLedger",
    "SearchPlan",
    "TrialMechanism",
    "TrialShape",
    "compose",
    "composition_epsilon",
    "plan_search",
    "noise_generator",
    "secure_seed",
    "PerExampleGradients",
    "check_model_supports_dp",
    "PoissonSampler",
]
