"""The search-space schema: a YAML file that says what is fixed, what is searched, and how.

The same pydantic schema as run configs (`config/schema.py`): a space's `data` block is a
`DataConfig`, its `privacy` block the budget keys of `PrivacyConfig`, and every `fixed` value and
every searched choice or range end is checked against the type of its config key. On top of that
the shape rules of a search: every range is non-empty, nothing is both fixed and searched, sigma is
never set, the privacy budget sits in its own block that no trial can change, conditions form no
cycle. What needs the data (sampled configs parse, the budget is reachable) is checked by
`eqdp_ray.tune.feasibility`.

The schema is documented for users in docs/SEARCH_SPACES.md; keep the two in step.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from eqdp_ray.config.distributions import Distribution, freeze, thaw
from eqdp_ray.config.errors import ConfigError, SpaceError
from eqdp_ray.config.overrides import apply_overrides
from eqdp_ray.config.schema import (
    Accountant,
    DataConfig,
    Delta,
    Epsilon,
    RunConfig,
    config_keys,
    default_of,
    key_type,
    parse_config,
)
from eqdp_ray.config.source import Source, read_yaml
from eqdp_ray.config.types import (
    Block,
    Bool,
    Count,
    Int,
    Number,
    PositiveNumber,
    Str,
    as_error,
    fail,
    first_error,
    unknown_key_message,
)

OBJECTIVE_METRICS = {"val_accuracy": "max", "num_params": "min", "device_seconds": "min", "wall_time_s": "min"}

#: Pseudo-key: the Poisson sample rate q; the trial's expected batch is round(q * train size).
SAMPLE_RATE = "sample_rate"
SampleRate = Annotated[Number, Field(gt=0, le=1)]
_SIGMA_NAMES = ("sigma", "noise_multiplier")
BUDGET_KEYS = ("target_epsilon", "delta", "accountant", "scope", "validation_noise", "public_validation")
#: Keys of the privacy block that are the run config's own (the rest belong to the search).
RUN_BUDGET_KEYS = ("target_epsilon", "delta", "accountant")
SCOPES = ("search", "trial")
_NOT_SEARCHABLE = {
    "name": "the trial name is set by the study",
    "seed": "a searched seed would change the "
    "validation split between trials, so their validation accuracies would not be comparable",
    "device": "the device follows the resources block",
    "privacy.secret_seed": "the noise secret is never a hyperparameter",
    "privacy.score_noise": "the validation noise follows the privacy block's validation_noise",
    "privacy.release_train_metrics": "the privacy block's scope decides what leaves a trial",
}
_GROUPS = ("model.options", "data", "privacy", "training", "model")
_STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")

#: Defaults of RunConfig that conditions may refer to without fixing them.
CONDITION_DEFAULTS: dict[str, Any] = {key: default_of(key) for key in ("model.name", "training.optimizer")}


# ------------------------------------------------------------------------------------------
# Values of config keys
# ------------------------------------------------------------------------------------------


def check_value(key: str, value: Any, at: tuple[str, ...] = (), what: str = "") -> None:
    """Raise (inside a validator, at `at`) if `value` is not a valid value of config key `key`."""
    if key.startswith("model.options."):
        return  # free-form: the model registry checks options by name
    adapter = _SAMPLE_RATE_TYPE if key == SAMPLE_RATE else key_type(key)
    try:
        adapter.validate_python(thaw(value))
    except ValidationError as exc:
        loc, message = first_error(exc)
        raise fail(what + message, at=at + loc) from None


_SAMPLE_RATE_TYPE = TypeAdapter(SampleRate)


# ------------------------------------------------------------------------------------------
# The blocks of a space besides fixed and search
# ------------------------------------------------------------------------------------------


class Budget(Block):
    """The privacy block: the (epsilon, delta) of the whole study and its accountant, nothing a trial sets."""

    model_config = ConfigDict(frozen=True)

    target_epsilon: Epsilon
    delta: Delta
    accountant: Accountant = "rdp"
    # `search`: (target_epsilon, delta) bounds the whole study, the released best model included;
    # `trial`: each trial alone, the released model is NOT covered (docs/PRIVACY.md).
    scope: Literal["search", "trial"] = "search"
    # scope search: std of the noise on each released validation accuracy (a fraction; the noise on
    # the count of correct predictions is this times the validation size)
    validation_noise: Annotated[Number, Field(gt=0, lt=1)] = 0.05
    # true: the validation split is public data, so scores are exact and unaccounted
    public_validation: Bool = False

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in data:
            if key in _SIGMA_NAMES:
                raise fail(_SIGMA_MESSAGE, at=(key,))
            if key not in BUDGET_KEYS:
                hint = (
                    " (the clip norm is a training choice: put 'privacy.max_grad_norm' under fixed or search)"
                    if key == "max_grad_norm"
                    else ""
                )
                raise fail(
                    f"unknown key; the privacy block holds only the budget: {', '.join(BUDGET_KEYS)}{hint}", at=(key,)
                )
        for key in ("target_epsilon", "delta"):
            if key not in data:
                raise fail(f"the privacy block needs '{key}': the budget is fixed for the study")
        return data


class Resources(Block):
    """What one trial reserves: `workers` Ray Train workers, each with these CPUs and GPUs."""

    model_config = ConfigDict(frozen=True)

    workers: Count = 1
    cpus_per_worker: PositiveNumber = 1.0
    gpus_per_worker: Annotated[Number, Field(ge=0)] = 0.0


class Sampler(Block):
    model_config = ConfigDict(frozen=True)

    type: Literal["tpe", "random"] = "tpe"
    seed: Annotated[Int, Field(ge=0)] | None = None
    multivariate: Bool = True
    n_startup_trials: Annotated[Int, Field(ge=0)] | None = None  # TPE only; Optuna's default is 10

    @model_validator(mode="after")
    def _startup_is_tpe_only(self) -> Sampler:
        if self.n_startup_trials is not None and self.type != "tpe":
            raise fail("applies to the tpe sampler only", at=("n_startup_trials",))
        return self


class Scheduler(Block):
    model_config = ConfigDict(frozen=True)

    type: Literal["asha", "none"] = "asha"
    grace_period: Count = 1
    reduction_factor: Number = 2.0
    max_t: Count = 1000
    time_attr: Str = "training_iteration"  # one validation pass per iteration

    @model_validator(mode="after")
    def _asha(self) -> Scheduler:
        if self.type == "asha":
            if self.reduction_factor <= 1:
                raise fail("must be > 1", at=("reduction_factor",))
            if self.grace_period > self.max_t:
                raise fail(f"must not exceed max_t={self.max_t}", at=("grace_period",))
            if self.time_attr not in ("training_iteration", "step", "epoch"):
                raise fail(
                    f"must be training_iteration (validation passes), step or epoch, got {self.time_attr!r}",
                    at=("time_attr",),
                )
        return self


class TrialCount(Block):
    """A random number of trials (Papernot & Steinke): releasing only the best trial then has a privacy bound."""

    model_config = ConfigDict(frozen=True)

    distribution: Literal["truncated_negative_binomial", "poisson"]
    mean: PositiveNumber
    eta: Number = 1.0  # truncated negative binomial only; 1 = geometric, 0 = logarithmic

    @model_validator(mode="before")
    @classmethod
    def _needs_mean(cls, data: Any) -> Any:
        if isinstance(data, dict) and "distribution" in data and "mean" not in data:
            raise fail("a random number of trials needs its 'mean' (the expected number of trials)")
        return data

    @model_validator(mode="after")
    def _ranges(self) -> TrialCount:
        if self.distribution == "truncated_negative_binomial":
            if not self.eta > -1:
                raise fail(f"eta must be > -1, got {self.eta!r}", at=("eta",))
            if self.mean <= 1:
                raise fail(
                    f"the truncated negative binomial always runs >= 1 trial: its mean must be > 1, got {self.mean!r}",
                    at=("mean",),
                )
        elif "eta" in self.model_fields_set:
            raise fail("eta applies to the truncated negative binomial only", at=("eta",))
        elif self.mean > 500:
            raise fail(f"a Poisson mean above 500 is not supported, got {self.mean!r}", at=("mean",))
        return self


NumSamples = Annotated[
    Annotated[Count, Tag("~count")] | Annotated[TrialCount, Tag("~random")],
    Discriminator(lambda v: "~random" if isinstance(v, (dict, TrialCount)) else "~count"),
]


class Objective(Block):
    model_config = ConfigDict(frozen=True)

    metric: Str
    mode: Literal["max", "min"]

    @model_validator(mode="before")
    @classmethod
    def _metric(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"metric": data}
        if isinstance(data, dict):
            metric = data.get("metric")
            if metric == "test_accuracy":
                raise fail(
                    "test_accuracy never drives the search: selection uses the validation split "
                    "only (the test accuracy of every trial is recorded in the results store)"
                )
            if metric not in OBJECTIVE_METRICS:
                raise fail(f"unknown metric {metric!r}; choose from {', '.join(OBJECTIVE_METRICS)}")
            data = {"mode": OBJECTIVE_METRICS[metric], **data}
        return data


def _objectives(value: Any) -> Any:
    if value is None:
        return [{"metric": "val_accuracy", "mode": "max"}]
    if not isinstance(value, (list, tuple)) or not value:
        raise fail(
            "objectives: expects a list such as [{metric: val_accuracy, mode: max}, {metric: num_params, mode: min}]"
        )
    return value


def _check_objectives(value: tuple[Objective, ...]) -> tuple[Objective, ...]:
    metrics = [o.metric for o in value]
    if len(set(metrics)) != len(metrics):
        raise fail(f"repeated metric in {metrics}")
    if "val_accuracy" not in metrics:
        raise fail("the objectives must include val_accuracy")
    return value


# ------------------------------------------------------------------------------------------
# Config keys named by a space (the keys of `fixed`, `search` and `when`)
# ------------------------------------------------------------------------------------------

_SIGMA_MESSAGE = (
    "sigma (the noise multiplier) is never set or searched: every trial derives it "
    "from the fixed privacy budget, its own sample rate and its number of steps"
)


def check_config_key(key: str, block: str) -> None:
    """Raise (inside a validator) if `key` may not appear under `block` ('fixed' or 'search')."""
    try:
        _check_config_key(key, block)
    except ValueError as exc:
        raise fail(str(exc), at=(block, key)) from None


def _check_config_key(key: str, block: str) -> None:
    if key.rsplit(".", 1)[-1] in _SIGMA_NAMES:
        raise ValueError(_SIGMA_MESSAGE)
    if key == SAMPLE_RATE or key.startswith("model.options.") and len(key) > len("model.options."):
        return
    if key in _GROUPS:
        raise ValueError(f"'{key}' is a group of keys; name one key inside it, e.g. '{key}.<key>'")
    known = config_keys()
    if key not in known:
        raise ValueError(unknown_key_message(key, [*known, SAMPLE_RATE], what=f"config key '{key}'"))
    if key.startswith("privacy.") and key.split(".", 1)[1] in BUDGET_KEYS:
        raise ValueError(
            f"'{key}' belongs to the privacy block: the budget is fixed for the whole study "
            f"and no trial may change it (remove it from '{block}')"
        )
    if key.startswith("data."):
        raise ValueError(
            f"'{key}' belongs to the data block: every trial must see the same data and "
            f"validation split (remove it from '{block}')"
        )
    if block == "search" and key in _NOT_SEARCHABLE:
        raise ValueError(f"cannot be searched: {_NOT_SEARCHABLE[key]}")


def _dependency_order(search: dict[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    """Order keys so that every condition refers to keys decided before it (define-by-run needs this)."""
    for key, dist in search.items():
        for parent, _ in dist.when:
            if parent == key:
                raise fail("a key cannot depend on itself", at=(key, "when"))
            if parent not in search and parent not in fixed and parent not in CONDITION_DEFAULTS:
                raise fail(f"condition on '{parent}', which is neither searched nor fixed in this space", (key, "when"))
    ordered: dict[str, Any] = {}
    pending = dict(search)
    while pending:
        ready = [k for k, d in pending.items() if all(p not in pending for p, _ in d.when)]
        if not ready:
            raise fail("conditions form a cycle: " + ", ".join(sorted(pending)), at=(next(iter(pending)), "when"))
        for key in ready:
            ordered[key] = pending.pop(key)
    return ordered


# ------------------------------------------------------------------------------------------
# The space
# ------------------------------------------------------------------------------------------


def _space_data(value: Any) -> Any:
    if not isinstance(value, dict) or "name" not in value:
        raise fail("the data block needs the data set's 'name' (e.g. digits, cifar10)")
    return value


class SearchSpace(Block):
    """A parsed, shape-checked search space; every trial's config starts from its blocks."""

    study: Str
    description: Annotated[Str, BeforeValidator(lambda v: "" if v is None else v)] = ""
    privacy: Annotated[Budget, AfterValidator(lambda b: b.model_dump())]  # dict of the budget keys
    data: Annotated[DataConfig, BeforeValidator(_space_data), AfterValidator(lambda d: d.model_dump())]  # dict
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Distribution] = Field(default_factory=dict)  # in dependency order
    resources: Resources = Field(default_factory=Resources)
    sampler: Sampler = Field(default_factory=Sampler)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    num_samples: NumSamples = 10
    max_concurrent: Count | None = None
    objectives: Annotated[tuple[Objective, ...], BeforeValidator(_objectives), AfterValidator(_check_objectives)] = (
        Objective(metric="val_accuracy", mode="max"),
    )

    _source: str | None = PrivateAttr(default=None)
    _key_source: Source = PrivateAttr(default_factory=Source)  # config key path -> where the space set it

    # Each validator below is one named step of parsing a space, in the order they run.

    @model_validator(mode="before")
    @classmethod
    def _keys_and_defaults(cls, data: Any) -> Any:
        """Check every config key named under fixed/search; fill defaults that depend on other blocks."""
        if not isinstance(data, dict):
            return data
        study = data.get("study")
        if not isinstance(study, str) or not _STUDY_RE.match(study):
            raise fail(
                "every space needs a study name of letters, digits, '_', '.' or '-' "
                f"(rows in the results store are grouped by it), got {study!r}",
                at=("study",),
            )
        for block in ("fixed", "search"):
            if isinstance(data.get(block), dict):
                for key in data[block]:
                    check_config_key(str(key), block)
        privacy = data.get("privacy")
        if isinstance(privacy, dict):
            sigma = [k for k in privacy if k in _SIGMA_NAMES]
            if sigma:
                raise fail(_SIGMA_MESSAGE, at=("privacy", sigma[0]))
        random_count = isinstance(data.get("num_samples"), dict)
        objectives = data.get("objectives")
        several = isinstance(objectives, list) and len(objectives) > 1
        data = dict(data)
        for block, default in (
            ("sampler", "random" if random_count else "tpe"),
            ("scheduler", "none" if (several or random_count) else "asha"),
        ):
            given = data.get(block)
            if given is None:
                data[block] = {"type": default}
            elif isinstance(given, dict) and "type" not in given:
                data[block] = {"type": default, **given}
        return data

    @field_validator("fixed", mode="after")
    @classmethod
    def _fixed_values(cls, fixed: dict[str, Any]) -> dict[str, Any]:
        """Each fixed value has the type of its config key."""
        for key, value in fixed.items():
            check_value(key, value, at=(key,))
        return {k: freeze(v) for k, v in fixed.items()}

    @field_validator("search", mode="after")
    @classmethod
    def _searched_values(cls, search: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Every choice and both ends of every range have the type of the config key; order by conditions."""
        for key, dist in search.items():
            for i, value in enumerate(dist.corners()):
                part = "choices" if dist.type == "categorical" else ("low", "high")[i]
                check_value(key, value, at=(key, part), what=f"{thaw(value)!r} is not a valid value: ")
        return _dependency_order(search, info.data.get("fixed", {}))

    @model_validator(mode="after")
    def _blocks_agree(self, info: ValidationInfo) -> SearchSpace:
        """Rules across blocks: one home per key, a length of training, a search the privacy bound covers."""
        source: Source = (info.context or {}).get("source") or Source()
        for key in self.search:
            if key in self.fixed:
                fixed, searched = ("fixed", key), ("search", key)
                if source.override_of(fixed) and not source.override_of(searched):  # name the --set
                    raise fail(
                        f"'{key}' is both fixed and searched ({source.origin(searched)}); keep one: "
                        f"drop this --set, or remove '{key}' from the space's search block",
                        at=fixed,
                    )
                fixed_at = source.origin(fixed, file=bool(source.override_of(searched)))
                raise fail(f"is both fixed ({fixed_at}) and searched; keep one", at=searched)
        for a, b in (("training.batch_size", SAMPLE_RATE), ("training.steps", "training.epochs")):
            if all(k in self.search or k in self.fixed for k in (a, b)):
                at_a, at_b = (("search" if k in self.search else "fixed", k) for k in (a, b))
                at, other = (at_a, at_b) if source.override_of(at_a) and not source.override_of(at_b) else (at_b, at_a)
                other_at = source.origin(other, file=bool(source.override_of(at)))
                raise fail(
                    f"set only one of '{a}' and '{b}' (fixed or searched); '{other[1]}' is also set "
                    f"({other_at} under '{other[0]}'): remove one of the two",
                    at=at,
                )
        if not any(k in self.search or k in self.fixed for k in ("training.steps", "training.epochs")):
            raise fail("the space must fix or search 'training.steps' or 'training.epochs'", at=("fixed",))
        if len(self.objectives) > 1 and self.scheduler.type == "asha":
            raise fail(
                "ASHA stops trials on a single metric and cannot rank a multi-objective search "
                f"({', '.join(self.metrics)}); set scheduler: {{type: none}} or use one objective",
                at=("scheduler", "type"),
            )
        if self.private_selection:
            self._covered_by_the_bound()
        return self

    def _covered_by_the_bound(self) -> None:
        if self.sampler.type != "random":
            raise fail(
                "a random number of trials (the Papernot-Steinke bound) needs "
                "sampler type random: an adaptive sampler like TPE is not covered by that bound",
                at=("sampler", "type"),
            )
        if self.scheduler.type != "none":
            raise fail(
                "a random number of trials (the Papernot-Steinke bound) needs "
                "scheduler type none: early stopping makes trials depend on each other",
                at=("scheduler", "type"),
            )
        if len(self.objectives) > 1:
            raise fail(
                "the Papernot-Steinke bound covers releasing the single best trial "
                "of a totally ordered objective; use one objective",
                at=("objectives",),
            )

    @property
    def source(self) -> str | None:
        """The file the space was read from (None for plain data)."""
        return self._source

    @property
    def key_source(self) -> Source:
        """Where the space set each config key of a trial config (a file line or a `--set`), for errors."""
        return self._key_source

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def private_selection(self) -> bool:
        """True when the number of trials is random: the Papernot-Steinke bound applies."""
        return isinstance(self.num_samples, TrialCount)

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): saved with an experiment so `--resume` can check the space is unchanged."""
        return {"source": self.source, **self.model_dump(mode="json", warnings=False)}


# ------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------


def parse_space(data: Mapping[str, Any], source: Source | None = None) -> SearchSpace:
    """Check the shape of a space given as plain data (what YAML gives)."""
    source = source or Source()
    try:
        space = SearchSpace.model_validate(dict(data), context={"source": source})
    except ValidationError as exc:
        raise as_error(exc, source, SpaceError) from None
    space._source = source.name
    space._key_source = _key_source(space, source)
    return space


def _key_source(space: SearchSpace, source: Source) -> Source:
    """Where each config key of `fixed` and `search` was written (line or `--set`), by its path in a trial config.

    A trial config that fails to parse is then blamed on the file line or the `--set` that set the key.
    """
    out = Source()  # no file name: the caller names the space file once
    for block in ("fixed", "search"):
        for key in getattr(space, block):
            path = tuple(key.split("."))
            if (block, key) in source.lines:
                out.lines[path] = source.lines[(block, key)]
            override = source.override_of((block, key))
            if override is not None:
                out.overridden[path] = override
    return out


def load_space(space: str | Path | Mapping[str, Any] | SearchSpace, overrides: Iterable[str] = ()) -> SearchSpace:
    """Read and shape-check a space from a YAML path or plain data (`--set` overrides applied first).

    Under `fixed` and `search` the rest of an override's key is a dotted config key:
    `search.training.lr.high=3`, `fixed.training.steps=9`.
    """
    overrides = list(overrides)
    if isinstance(space, SearchSpace):
        if overrides:
            raise SpaceError("--set overrides apply to a space file or its plain data, not to a parsed SearchSpace")
        return space
    if isinstance(space, Mapping):
        data, source = copy.deepcopy(dict(space)), Source()
    else:
        data, source = read_yaml(space, "search space", SpaceError)
    apply_overrides(
        data, overrides, source, dotted_blocks=("fixed", "search"), whole_blocks=("search",), error=SpaceError
    )
    return parse_space(data, source)


# ------------------------------------------------------------------------------------------
# From sampled parameters to a trial config
# ------------------------------------------------------------------------------------------


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = thaw(value)


def resolve_params(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
    """Decode the sampled values (Optuna's scalars) and keep only keys whose conditions hold."""
    values: dict[str, Any] = dict(CONDITION_DEFAULTS)
    values.update(space.fixed)
    out: dict[str, Any] = {}
    for key, dist in space.search.items():
        if not dist.active(values) or key not in params:
            continue
        value = dist.decode(params[key])
        values[key] = out[key] = freeze(value)
    return out


def trial_config(
    space: SearchSpace, params: Mapping[str, Any], train_size: int, *, name: str | None = None
) -> RunConfig:
    """The RunConfig of one trial: defaults, then data/privacy blocks, fixed keys, sampled keys."""
    privacy = {k: v for k, v in space.privacy.items() if k in RUN_BUDGET_KEYS}  # the rest is the search's
    data: dict[str, Any] = {"name": name or space.study, "data": dict(space.data), "privacy": privacy}
    if space.resources.gpus_per_worker == 0 and "device" not in space.fixed:
        data["device"] = "cpu"  # do not grab a GPU that the trial did not reserve
    chosen = dict(space.fixed)
    chosen.update(resolve_params(space, params))
    for key, value in chosen.items():
        if key == SAMPLE_RATE:
            rate = float(value)
            if not 0 < rate <= 1:
                raise ConfigError(f"{SAMPLE_RATE} must lie in (0, 1], got {rate!r}")
            _set_dotted(data, "training.batch_size", max(1, round(rate * train_size)))
        else:
            _set_dotted(data, key, value)
    return parse_config(data, space._key_source)
