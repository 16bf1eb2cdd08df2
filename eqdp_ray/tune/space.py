"""The search-space schema: a YAML file that says what is fixed, what is searched, and how.

A space is checked in two passes so that a mistake costs seconds, not a cluster hour:

1. `load_space` checks the shape of the file: every key is known (errors name the line),
   every range is non-empty, nothing is both fixed and searched, sigma is never set, the
   privacy budget sits in its own block that no trial can change.
2. `check_space` checks what the shape cannot show: that sampled trial configs pass
   `parse_config` (every categorical choice and both ends of every range are tried), and that
   at least one point of the space can meet the fixed (epsilon, delta) at all.

The schema is documented for users in docs/SEARCH_SPACES.md; keep the two in step.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eqdp_ray.config import ConfigError, RunConfig, parse_config
from eqdp_ray.privacy import PrivacyBudgetError, plan_privacy

# ------------------------------------------------------------------------------------------
# Errors and source positions
# ------------------------------------------------------------------------------------------


class SpaceError(ConfigError):
    """A search space the user must fix; the message names the file, line and key."""


Path_ = tuple[str, ...]


@dataclass
class _Source:
    """Where each key of a space came from, so errors can point at the line to edit."""

    name: str | None = None  # file name, or None for a dict built in Python
    lines: dict[Path_, int] = field(default_factory=dict)
    overridden: set[Path_] = field(default_factory=set)

    def where(self, path: Path_) -> str:
        dotted = ".".join(path)
        for o in sorted(self.overridden):  # an override at, above or inside the key
            if o[: len(path)] == path or path[: len(o)] == o:
                return f"--set {'.'.join(o)}: '{dotted}': "
        for i in range(len(path), 0, -1):
            if path[:i] in self.lines:
                prefix = f"{self.name}:" if self.name else "line "
                return f"{prefix}{self.lines[path[:i]]}: '{dotted}': "
        return f"{self.name}: '{dotted}': " if self.name else f"'{dotted}': "

    def error(self, path: Path_, message: str) -> SpaceError:
        return SpaceError(self.where(path) + message)


def _record_lines(node: yaml.Node, prefix: Path_, lines: dict[Path_, int], file: str | None) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                where = f"{file}:{line}" if file else f"line {line}"
                raise SpaceError(f"{where}: duplicate key '{'.'.join(prefix + (key,))}' (first at line {seen[key]})")
            seen[key] = line
            lines[prefix + (key,)] = line
            _record_lines(value_node, prefix + (key,), lines, file)


def _read_yaml(path: Path) -> tuple[dict[str, Any], _Source]:
    if not path.is_file():
        raise SpaceError(f"search space file not found: {path}")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpaceError(f"{path}{where}: malformed YAML: {problem}") from None
    source = _Source(name=str(path))
    if node is not None:
        _record_lines(node, (), source.lines, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data, source


# ------------------------------------------------------------------------------------------
# The schema
# ------------------------------------------------------------------------------------------

DISTRIBUTIONS = ("categorical", "int", "float", "loguniform")
SAMPLERS = ("tpe", "random")
SCHEDULERS = ("asha", "none")
COUNT_DISTRIBUTIONS = ("truncated_negative_binomial", "poisson")
OBJECTIVE_METRICS = {"val_accuracy": "max", "num_params": "min", "device_seconds": "min", "wall_time_s": "min"}

#: Pseudo-key: the Poisson sample rate q; the trial's expected batch is round(q * train size).
SAMPLE_RATE = "sample_rate"
_SIGMA_KEYS = {
    "sigma",
    "noise_multiplier",
    "privacy.sigma",
    "privacy.noise_multiplier",
    "training.sigma",
    "training.noise_multiplier",
}
_BUDGET_KEYS = ("target_epsilon", "delta", "accountant")
_NOT_SEARCHABLE = {
    "name": "the trial name is set by the study",
    "seed": "a searched seed would change the "
    "validation split between trials, so their validation accuracies would not be comparable",
    "device": "the device follows the resources block",
    "privacy.secret_seed": "the noise secret is never a hyperparameter",
}
_STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Distribution:
    """One searched key: where its values come from, and when it applies."""

    type: str
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # all must hold: value of key in the tuple

    @property
    def encoded(self) -> bool:
        """Optuna stores only scalar choices; lists (layouts) travel as JSON text."""
        return self.type == "categorical" and any(not _is_scalar(c) for c in self.choices)

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(key in values and _canon(values[key]) in {_canon(v) for v in allowed} for key, allowed in self.when)

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask an Optuna trial (define-by-run) for a value; returns the decoded value."""
        if self.type == "categorical":
            if self.encoded:
                return json.loads(trial.suggest_categorical(name, [json.dumps(c) for c in self.choices]))
            return trial.suggest_categorical(name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def corners(self) -> list[Any]:
        """The values a check must try: every choice, or both ends of the range."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            step = int(self.step or 1)
            top = int(self.low) + (int(self.high) - int(self.low)) // step * step
            return [int(self.low), top]
        return [float(self.low), float(self.high)]

    def support(self, limit: int) -> list[Any] | None:
        """Every value the key can take, or None if there are more than `limit` (or infinitely many)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            values = list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
            return values if len(values) <= limit else None
        if self.step:
            count = int(math.floor((float(self.high) - float(self.low)) / float(self.step) + 1e-9)) + 1
            if count <= limit:
                return [float(self.low) + i * float(self.step) for i in range(count)]
        return None

    def decode(self, value: Any) -> Any:
        if self.encoded and isinstance(value, str):
            return json.loads(value)
        return value


@dataclass(frozen=True)
class Resources:
    """What one trial reserves: `workers` Ray Train workers, each with these CPUs and GPUs."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass(frozen=True)
class Sampler:
    type: str = "tpe"
    seed: int | None = None
    multivariate: bool = True
    n_startup_trials: int | None = None  # TPE only; Optuna's default is 10


@dataclass(frozen=True)
class Scheduler:
    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int = 1000
    time_attr: str = "training_iteration"  # one validation pass per iteration


@dataclass(frozen=True)
class TrialCount:
    """A random number of trials (Papernot & Steinke): the whole search then has a privacy bound."""

    distribution: str
    mean: float
    eta: float = 1.0  # truncated negative binomial only; 1 = geometric, 0 = logarithmic


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, shape-checked search space. `base` is the nested config every trial starts from."""

    study: str
    description: str
    privacy: dict[str, Any]
    data: dict[str, Any]
    fixed: dict[str, Any]
    search: dict[str, Distribution]  # in dependency order: conditions refer to earlier keys
    resources: Resources
    sampler: Sampler
    scheduler: Scheduler
    num_samples: int | TrialCount
    max_concurrent: int | None
    objectives: tuple[Objective, ...]
    source: str | None = None

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
        return _plain(dataclasses.asdict(self))


# ------------------------------------------------------------------------------------------
# Config keys
# ------------------------------------------------------------------------------------------


def _config_keys(cls: type = RunConfig, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of RunConfig -> its type (model.options is free-form)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(hint):
            out.update(_config_keys(hint, name + "."))
        else:
            out[name] = hint
    return out


CONFIG_KEYS = _config_keys()


def _check_config_key(key: str, where: Path_, source: _Source) -> None:
    if key in _SIGMA_KEYS or key.rsplit(".", 1)[-1] in ("sigma", "noise_multiplier"):
        raise source.error(
            where,
            "sigma (the noise multiplier) is never set or searched: every trial derives it "
            "from the fixed privacy budget, its own sample rate and its number of steps",
        )
    if key == SAMPLE_RATE or key.startswith("model.options.") and len(key) > len("model.options."):
        return
    if key in ("model.options", "data", "privacy", "training", "model"):
        raise source.error(where, f"'{key}' is a group of keys; name one key inside it, e.g. '{key}.<key>'")
    if key not in CONFIG_KEYS:
        close = difflib.get_close_matches(key, list(CONFIG_KEYS) + [SAMPLE_RATE], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(CONFIG_KEYS)}, {SAMPLE_RATE}"
        raise source.error(where, f"unknown config key '{key}'{hint}")


def _check_not_budget(key: str, where: Path_, source: _Source, block: str) -> None:
    if key.startswith("privacy.") and key.split(".", 1)[1] in _BUDGET_KEYS:
        raise source.error(
            where,
            f"'{key}' belongs to the privacy block: the budget is fixed for the whole study "
            f"and no trial may change it (remove it from '{block}')",
        )
    if key.startswith("data."):
        raise source.error(
            where,
            f"'{key}' belongs to the data block: every trial must see the same data and "
            f"validation split (remove it from '{block}')",
        )


# ------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------

_TOP_KEYS = (
    "study",
    "description",
    "privacy",
    "data",
    "fixed",
    "search",
    "resources",
    "sampler",
    "scheduler",
    "num_samples",
    "max_concurrent",
    "objectives",
)


def _mapping(value: Any, path: Path_, source: _Source, allowed: Iterable[str] | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise source.error(path, f"expected a mapping, got {value!r}")
    if allowed is not None:
        allowed = list(allowed)
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise source.error(path + (str(key),), f"unknown key; {hint}valid keys here: {', '.join(allowed)}")
    return dict(value)


def _number(
    value: Any,
    path: Path_,
    source: _Source,
    *,
    integer: bool = False,
    positive: bool = False,
    minimum: float | None = None,
) -> Any:
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if integer else float(value)
        except (ValueError, yaml.YAMLError):
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise source.error(path, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise source.error(path, f"expected an integer, got {value!r}")
        value = int(value)
    if positive and value <= 0:
        raise source.error(path, f"must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise source.error(path, f"must be >= {minimum:g}, got {value!r}")
    return value


def _bool(value: Any, path: Path_, source: _Source) -> bool:
    if not isinstance(value, bool):
        raise source.error(path, f"expected true or false, got {value!r}")
    return value


def _parse_distribution(key: str, spec: Any, source: _Source) -> Distribution:
    path = ("search", key)
    if not isinstance(spec, dict):
        raise source.error(
            path,
            "a searched key needs a distribution, e.g. {type: categorical, choices: [a, b]} "
            "or {type: float, low: 0.1, high: 1.0, log: true}; to hold a value constant put it "
            "under 'fixed'",
        )
    kind = spec.get("type")
    if kind not in DISTRIBUTIONS:
        raise source.error(path + ("type",), f"type must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
    common = ("type", "when")
    allowed = {
        "categorical": common + ("choices",),
        "int": common + ("low", "high", "step", "log"),
        "float": common + ("low", "high", "step", "log"),
        "loguniform": common + ("low", "high"),
    }[kind]
    _mapping(spec, path, source, allowed)
    when = _parse_when(key, spec.get("when"), source)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise source.error(path + ("choices",), "categorical needs a non-empty list of choices")
        canon = [_canon(c) for c in choices]
        if len(set(canon)) != len(canon):
            raise source.error(path + ("choices",), f"repeated choice in {choices!r}")
        return Distribution("categorical", choices=tuple(_freeze(c) for c in choices), when=when)
    for end in ("low", "high"):
        if end not in spec:
            raise source.error(path, f"{kind} needs 'low' and 'high'")
    integer = kind == "int"
    low = _number(spec["low"], path + ("low",), source, integer=integer)
    high = _number(spec["high"], path + ("high",), source, integer=integer)
    if low >= high:
        raise source.error(
            path, f"empty range: low={low!r} must be below high={high!r} (to hold one value, put the key under 'fixed')"
        )
    log = kind == "loguniform" or _bool(spec.get("log", False), path + ("log",), source)
    step = spec.get("step")
    if step is not None:
        step = _number(step, path + ("step",), source, integer=integer, positive=True)
        if log and (step != 1 or not integer):
            raise source.error(path + ("step",), "step cannot be combined with a log scale")
        if step > high - low:
            raise source.error(path + ("step",), f"step={step!r} is larger than the range {low!r}..{high!r}")
    if log and low <= 0:
        raise source.error(path + ("low",), f"a log scale needs low > 0, got {low!r}")
    return Distribution("int" if integer else "float", low=low, high=high, step=step, log=log, when=when)


def _parse_when(key: str, spec: Any, source: _Source) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if spec is None:
        return ()
    path = ("search", key, "when")
    if not isinstance(spec, dict) or not spec:
        raise source.error(
            path,
            "when: expects a mapping of config keys to a value or a list of values, "
            "e.g. when: {model.name: eq_resnet9}",
        )
    out = []
    for parent, allowed in spec.items():
        values = tuple(_freeze(v) for v in allowed) if isinstance(allowed, list) else (_freeze(allowed),)
        if not values:
            raise source.error(path + (str(parent),), "an empty list of values can never hold")
        out.append((str(parent), values))
    return tuple(out)


def _parse_count(value: Any, source: _Source) -> int | TrialCount:
    path = ("num_samples",)
    if not isinstance(value, dict):
        return _number(value, path, source, integer=True, minimum=1)
    _mapping(value, path, source, ("distribution", "mean", "eta"))
    dist = value.get("distribution")
    if dist not in COUNT_DISTRIBUTIONS:
        raise source.error(path + ("distribution",), f"must be one of {', '.join(COUNT_DISTRIBUTIONS)}, got {dist!r}")
    if "mean" not in value:
        raise source.error(path, "a random number of trials needs its 'mean' (the expected number of trials)")
    mean = _number(value["mean"], path + ("mean",), source, positive=True)
    eta = 1.0
    if dist == "truncated_negative_binomial":
        eta = _number(value.get("eta", 1.0), path + ("eta",), source)
        if not eta > -1:
            raise source.error(path + ("eta",), f"eta must be > -1, got {eta!r}")
        if mean <= 1:
            raise source.error(
                path + ("mean",),
                f"the truncated negative binomial always runs >= 1 trial: its mean must be > 1, got {mean!r}",
            )
    elif "eta" in value:
        raise source.error(path + ("eta",), "eta applies to the truncated negative binomial only")
    elif mean > 500:
        raise source.error(path + ("mean",), f"a Poisson mean above 500 is not supported, got {mean!r}")
    return TrialCount(dist, float(mean), float(eta))


def _parse_objectives(value: Any, source: _Source) -> tuple[Objective, ...]:
    path = ("objectives",)
    if value is None:
        return (Objective("val_accuracy", "max"),)
    if not isinstance(value, list) or not value:
        raise source.error(
            path,
            "objectives: expects a list such as [{metric: val_accuracy, mode: max}, {metric: num_params, mode: min}]",
        )
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"metric": item}
        where = path + (str(i),)
        item = _mapping(item, where, source, ("metric", "mode"))
        metric = item.get("metric")
        if metric == "test_accuracy":
            raise source.error(
                where,
                "test_accuracy never drives the search: selection uses the validation split "
                "only (the test accuracy of every trial is recorded in the results store)",
            )
        if metric not in OBJECTIVE_METRICS:
            raise source.error(where, f"unknown metric {metric!r}; choose from {', '.join(OBJECTIVE_METRICS)}")
        mode = item.get("mode", OBJECTIVE_METRICS[metric])
        if mode not in ("max", "min"):
            raise source.error(where, f"mode must be 'max' or 'min', got {mode!r}")
        out.append(Objective(metric, mode))
    metrics = [o.metric for o in out]
    if len(set(metrics)) != len(metrics):
        raise source.error(path, f"repeated metric in {metrics}")
    if "val_accuracy" not in metrics:
        raise source.error(path, "the objectives must include val_accuracy")
    return tuple(out)


def _dependency_order(
    search: dict[str, Distribution], fixed: Mapping[str, Any], source: _Source
) -> dict[str, Distribution]:
    """Order keys so that every condition refers to keys decided before it (define-by-run needs this)."""
    for key, dist in search.items():
        for parent, _ in dist.when:
            if parent == key:
                raise source.error(("search", key, "when"), "a key cannot depend on itself")
            if parent not in search and parent not in fixed and parent not in CONDITION_DEFAULTS:
                raise source.error(
                    ("search", key, "when", parent),
                    f"condition on '{parent}', which is neither searched nor fixed in this space",
                )
    ordered: dict[str, Distribution] = {}
    pending = dict(search)
    while pending:
        ready = [k for k, d in pending.items() if all(p not in pending for p, _ in d.when)]
        if not ready:
            raise source.error(
                ("search", next(iter(pending)), "when"), "conditions form a cycle: " + ", ".join(sorted(pending))
            )
        for key in ready:
            ordered[key] = pending.pop(key)
    return ordered


#: Defaults of RunConfig that conditions may refer to without fixing them.
CONDITION_DEFAULTS: dict[str, Any] = {
    "model.name": RunConfig().model.name,
    "training.optimizer": RunConfig().training.optimizer,
}


def parse_space(data: Mapping[str, Any], source: _Source | None = None) -> SearchSpace:
    """Check the shape of a space given as plain data (what YAML gives)."""
    source = source or _Source()
    data = _mapping(dict(data), (), source, _TOP_KEYS)

    study = data.get("study")
    if not isinstance(study, str) or not _STUDY_RE.match(study):
        raise source.error(
            ("study",),
            "every space needs a study name of letters, digits, '_', '.' or '-' "
            f"(rows in the results store are grouped by it), got {study!r}",
        )
    description = data.get("description") or ""

    privacy = _mapping(data.get("privacy"), ("privacy",), source)
    for key in privacy:
        if key in ("sigma", "noise_multiplier"):
            _check_config_key(key, ("privacy", key), source)
        if key not in _BUDGET_KEYS:
            hint = (
                " (the clip norm is a training choice: put 'privacy.max_grad_norm' under fixed or search)"
                if key == "max_grad_norm"
                else ""
            )
            raise source.error(
                ("privacy", key),
                f"unknown key; the privacy block holds only the budget: {', '.join(_BUDGET_KEYS)}{hint}",
            )
    for key in ("target_epsilon", "delta"):
        if key not in privacy:
            raise source.error(("privacy",), f"the privacy block needs '{key}': the budget is fixed for the study")
    privacy.setdefault("accountant", "rdp")

    data_block = _mapping(data.get("data"), ("data",), source, [f.name for f in dataclasses.fields(RunConfig().data)])
    if "name" not in data_block:
        raise source.error(("data",), "the data block needs the data set's 'name' (e.g. digits, cifar10)")

    fixed = _mapping(data.get("fixed"), ("fixed",), source)
    for key in fixed:
        _check_config_key(key, ("fixed", key), source)
        _check_not_budget(key, ("fixed", key), source, "fixed")
    fixed = {k: _freeze(v) for k, v in fixed.items()}

    raw_search = _mapping(data.get("search"), ("search",), source)
    search: dict[str, Distribution] = {}
    for key, spec in raw_search.items():
        key = str(key)
        _check_config_key(key, ("search", key), source)
        _check_not_budget(key, ("search", key), source, "search")
        if key in _NOT_SEARCHABLE:
            raise source.error(("search", key), f"cannot be searched: {_NOT_SEARCHABLE[key]}")
        if key in fixed:
            raise source.error(
                ("search", key), f"is both fixed (line {source.lines.get(('fixed', key), '?')}) and searched; keep one"
            )
        search[key] = _parse_distribution(key, spec, source)
    for a, b in (("training.batch_size", SAMPLE_RATE), ("training.steps", "training.epochs")):
        both = [k for k in (a, b) if k in search or k in fixed]
        if len(both) == 2:
            path = ("search", b) if b in search else ("fixed", b)
            raise source.error(path, f"set only one of '{a}' and '{b}' (fixed or searched)")
    if not any(k in search or k in fixed for k in ("training.steps", "training.epochs")):
        raise source.error(("fixed",), "the space must fix or search 'training.steps' or 'training.epochs'")
    search = _dependency_order(search, fixed, source)

    res = _mapping(data.get("resources"), ("resources",), source, ("workers", "cpus_per_worker", "gpus_per_worker"))
    resources = Resources(
        workers=_number(res.get("workers", 1), ("resources", "workers"), source, integer=True, minimum=1),
        cpus_per_worker=float(
            _number(res.get("cpus_per_worker", 1), ("resources", "cpus_per_worker"), source, positive=True)
        ),
        gpus_per_worker=float(
            _number(res.get("gpus_per_worker", 0), ("resources", "gpus_per_worker"), source, minimum=0)
        ),
    )

    num_samples = _parse_count(data.get("num_samples", 10), source)
    objectives = _parse_objectives(data.get("objectives"), source)

    smp = _mapping(data.get("sampler"), ("sampler",), source, ("type", "seed", "multivariate", "n_startup_trials"))
    sampler_type = smp.get("type", "random" if isinstance(num_samples, TrialCount) else "tpe")
    if sampler_type not in SAMPLERS:
        raise source.error(("sampler", "type"), f"must be one of {', '.join(SAMPLERS)}, got {sampler_type!r}")
    seed = smp.get("seed")
    if seed is not None:
        seed = _number(seed, ("sampler", "seed"), source, integer=True, minimum=0)
    startup = smp.get("n_startup_trials")
    if startup is not None:
        if sampler_type != "tpe":
            raise source.error(("sampler", "n_startup_trials"), "applies to the tpe sampler only")
        startup = _number(startup, ("sampler", "n_startup_trials"), source, integer=True, minimum=0)
    sampler = Sampler(
        sampler_type, seed, _bool(smp.get("multivariate", True), ("sampler", "multivariate"), source), startup
    )

    sch = _mapping(
        data.get("scheduler"),
        ("scheduler",),
        source,
        ("type", "grace_period", "reduction_factor", "max_t", "time_attr"),
    )
    default_scheduler = "none" if (len(objectives) > 1 or isinstance(num_samples, TrialCount)) else "asha"
    sched_type = sch.get("type", default_scheduler)
    if sched_type not in SCHEDULERS:
        raise source.error(("scheduler", "type"), f"must be one of {', '.join(SCHEDULERS)}, got {sched_type!r}")
    scheduler = Scheduler(
        sched_type,
        _number(sch.get("grace_period", 1), ("scheduler", "grace_period"), source, integer=True, minimum=1),
        float(_number(sch.get("reduction_factor", 2), ("scheduler", "reduction_factor"), source)),
        _number(sch.get("max_t", 1000), ("scheduler", "max_t"), source, integer=True, minimum=1),
        str(sch.get("time_attr", "training_iteration")),
    )
    if scheduler.type == "asha":
        if scheduler.reduction_factor <= 1:
            raise source.error(("scheduler", "reduction_factor"), "must be > 1")
        if scheduler.grace_period > scheduler.max_t:
            raise source.error(("scheduler", "grace_period"), f"must not exceed max_t={scheduler.max_t}")
        if scheduler.time_attr not in ("training_iteration", "step", "epoch"):
            raise source.error(
                ("scheduler", "time_attr"),
                f"must be training_iteration (validation passes), step or epoch, got {scheduler.time_attr!r}",
            )
    if len(objectives) > 1 and scheduler.type == "asha":
        raise source.error(
            ("scheduler", "type"),
            "ASHA stops trials on a single metric and cannot rank a "
            f"multi-objective search ({', '.join(o.metric for o in objectives)}); set scheduler: "
            "{type: none} or use one objective",
        )

    if isinstance(num_samples, TrialCount):
        if sampler.type != "random":
            raise source.error(
                ("sampler", "type"),
                "a random number of trials (the Papernot-Steinke bound) needs "
                "sampler type random: an adaptive sampler like TPE is not covered by that bound",
            )
        if scheduler.type != "none":
            raise source.error(
                ("scheduler", "type"),
                "a random number of trials (the Papernot-Steinke bound) needs "
                "scheduler type none: early stopping makes trials depend on each other",
            )
        if len(objectives) > 1:
            raise source.error(
                ("objectives",),
                "the Papernot-Steinke bound covers releasing the single best trial "
                "of a totally ordered objective; use one objective",
            )

    max_concurrent = data.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = _number(max_concurrent, ("max_concurrent",), source, integer=True, minimum=1)

    return SearchSpace(
        study=study,
        description=str(description),
        privacy=privacy,
        data=data_block,
        fixed=fixed,
        search=search,
        resources=resources,
        sampler=sampler,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        objectives=objectives,
        source=source.name,
    )


def apply_space_overrides(data: dict[str, Any], overrides: Iterable[str], source: _Source) -> dict[str, Any]:
    """`--set key=value` on a space. Under `fixed` and `search` the rest of the key is a dotted config key."""
    for item in overrides:
        if "=" not in item:
            raise SpaceError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: dict[str, Any] = data
        path: Path_ = ()
        while len(parts) > 1:
            if path == ("fixed",):
                parts = [".".join(parts)]
                break
            if path == ("search",):
                for i in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:i])
                    if candidate in node:
                        break
                else:
                    if isinstance(value, dict):  # a whole new distribution: search.<key>={type: ...}
                        parts = [".".join(parts)]
                        break
                    raise SpaceError(
                        f"--set {key}: no searched key matches '{'.'.join(parts)}'; add it to the space "
                        "file, or set a whole distribution as search.<key>={type: ..., ...}"
                    )
                if i == len(parts):
                    parts = [candidate]
                    break
                parts = [candidate] + parts[i:]
            head = parts.pop(0)
            child = node.setdefault(head, {})
            if not isinstance(child, dict):
                raise SpaceError(f"--set {key}: '{'.'.join(path + (head,))}' is not a mapping")
            node, path = child, path + (head,)
        node[parts[0]] = value
        source.overridden.add(path + (parts[0],))
    return data


def load_space(space: str | Path | Mapping[str, Any] | SearchSpace, overrides: Iterable[str] = ()) -> SearchSpace:
    """Read and shape-check a space from a YAML path or plain data (`--set` overrides applied first)."""
    overrides = list(overrides)
    if isinstance(space, SearchSpace):
        if overrides:
            raise SpaceError("--set overrides apply to a space file or its plain data, not to a parsed SearchSpace")
        return space
    if isinstance(space, Mapping):
        data, source = copy.deepcopy(dict(space)), _Source()
    else:
        data, source = _read_yaml(Path(space))
    apply_space_overrides(data, overrides, source)
    return parse_space(data, source)


# ------------------------------------------------------------------------------------------
# From sampled parameters to a trial config
# ------------------------------------------------------------------------------------------


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = _thaw(value)


def resolve_params(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
    """Decode the sampled values (Optuna's scalars) and keep only keys whose conditions hold."""
    values: dict[str, Any] = dict(CONDITION_DEFAULTS)
    values.update(space.fixed)
    out: dict[str, Any] = {}
    for key, dist in space.search.items():
        if not dist.active(values) or key not in params:
            continue
        value = dist.decode(params[key])
        values[key] = out[key] = _freeze(value)
    return out


def trial_config(
    space: SearchSpace, params: Mapping[str, Any], train_size: int, *, name: str | None = None
) -> RunConfig:
    """The RunConfig of one trial: defaults, then data/privacy blocks, fixed keys, sampled keys."""
    data: dict[str, Any] = {"name": name or space.study, "data": dict(space.data), "privacy": dict(space.privacy)}
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
    return parse_config(data)


# ------------------------------------------------------------------------------------------
# Whole-space checks (need the training set size)
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceCheck:
    """What `check_space` found: the configs it tried and the privacy corners of the space."""

    train_size: int
    points_checked: int
    easiest: tuple[float, int]  # (sample rate, steps) that needs the least noise
    hardest: tuple[float, int]
    hardest_feasible: bool
    warnings: tuple[str, ...] = ()


def _activate(space: SearchSpace, key: str) -> dict[str, Any]:
    """Values for the ancestors of `key` that make its conditions hold (first allowed value each)."""
    forced: dict[str, Any] = {}
    for parent, allowed in space.search[key].when:
        if parent in space.search:  # dependency order rules out cycles
            forced.update(_activate(space, parent))
            forced[parent] = allowed[0]
    return forced


def _point(space: SearchSpace, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A full parameter assignment: overrides where given, the first corner elsewhere."""
    values: dict[str, Any] = dict(CONDITION_DEFAULTS)
    values.update(space.fixed)
    params: dict[str, Any] = {}
    for key, dist in space.search.items():
        if not dist.active(values):
            continue
        value = overrides[key] if key in overrides else dist.corners()[0]
        values[key] = params[key] = value
    return params


def corner_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Every choice and both ends of every range, each with its conditions made to hold."""
    points = [_point(space, {})]
    for key, dist in space.search.items():
        forced = _activate(space, key)
        for value in dist.corners():
            points.append(_point(space, {**forced, key: value}))
    unique: dict[str, dict[str, Any]] = {}
    for p in points:
        unique.setdefault(json.dumps(p, sort_keys=True, default=str), p)
    return list(unique.values())


def _privacy_support(space: SearchSpace, key: str, limit: int) -> list[Any] | None:
    """The values a privacy-relevant key can take (None: not set by the space)."""
    values: list[Any] = []
    if key in space.fixed:
        values.append(space.fixed[key])
    if key in space.search:
        support = space.search[key].support(limit)
        if support is None:
            return None
        values.extend(support)
        if space.search[key].when:  # when the condition fails the default applies
            default = _default_of(key)
            if default is not None:
                values.append(default)
    return values


def _default_of(key: str) -> Any:
    node: Any = RunConfig()
    for part in key.split("."):
        node = getattr(node, part, None)
    return node


def privacy_candidates(space: SearchSpace, train_size: int, *, limit: int = 64) -> list[tuple[float, int]] | None:
    """Every (sample rate, steps) a trial of this space can run, or None if there are too many.

    Only these two decide a trial's privacy curve (sigma follows from them and the fixed budget);
    the clip norm, learning rate, model and augmentation do not.
    """
    if SAMPLE_RATE in space.fixed or SAMPLE_RATE in space.search:
        rates = _privacy_support(space, SAMPLE_RATE, limit)
        batches = None if rates is None else [max(1, round(float(r) * train_size)) for r in rates]
    else:
        batches = _privacy_support(space, "training.batch_size", limit) or [RunConfig().training.batch_size]
    by_steps = "training.steps" in space.fixed or "training.steps" in space.search
    lengths = _privacy_support(space, "training.steps" if by_steps else "training.epochs", limit)
    if batches is None or lengths is None:
        return None
    out: set[tuple[float, int]] = set()
    for batch in {int(b) for b in batches}:
        q = batch / train_size
        if by_steps:
            out.update((q, int(s)) for s in lengths)
        else:
            out.update((q, max(1, math.ceil(float(e) / q))) for e in lengths)
    if len(out) > limit:
        return None
    return sorted(out)


def _range_ends(space: SearchSpace, key: str) -> list[Any]:
    values = []
    if key in space.fixed:
        values.append(space.fixed[key])
    if key in space.search:
        values.extend(space.search[key].corners())
        if space.search[key].when and _default_of(key) is not None:
            values.append(_default_of(key))
    return values


def privacy_corners(space: SearchSpace, train_size: int) -> list[tuple[float, int]]:
    """(q, steps) at the ends of the ranges: privacy cost grows with q and steps (and with q at fixed epochs)."""
    if SAMPLE_RATE in space.fixed or SAMPLE_RATE in space.search:
        batches = [max(1, round(float(r) * train_size)) for r in _range_ends(space, SAMPLE_RATE)]
    else:
        batches = [int(b) for b in _range_ends(space, "training.batch_size")] or [RunConfig().training.batch_size]
    out = set()
    for batch in batches:
        q = batch / train_size
        if "training.steps" in space.fixed or "training.steps" in space.search:
            out.update((q, int(s)) for s in _range_ends(space, "training.steps"))
        else:
            out.update((q, max(1, math.ceil(float(e) / q))) for e in _range_ends(space, "training.epochs"))
    return sorted(out)


def check_space(space: SearchSpace, train_size: int) -> SpaceCheck:
    """Fail before any trial starts if sampled configs are invalid or no trial can meet the budget."""
    from eqdp_ray.models import resolve_options

    points = corner_points(space)
    for params in points:
        try:
            config = trial_config(space, params, train_size)
            resolve_options(config.model.name, **config.model.options)  # names only: building takes seconds
        except (ConfigError, ValueError) as exc:
            keys = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "(nothing searched)"
            raise SpaceError(
                f"{space.source + ': ' if space.source else ''}the trial config at {keys} is invalid: {exc}"
            ) from None
        if config.training.batch_size > train_size:
            which = SAMPLE_RATE if SAMPLE_RATE in params else "training.batch_size"
            raise SpaceError(
                f"{space.source + ': ' if space.source else ''}'{which}' reaches an expected batch of "
                f"{config.training.batch_size}, more than the {train_size} training examples of "
                f"{space.data.get('name')}; lower it"
            )

    p = space.privacy
    corners = privacy_corners(space, train_size)
    feasible: list[tuple[float, int]] = []
    first_error = ""
    for q, steps in corners:
        try:
            plan_privacy(float(p["target_epsilon"]), float(p["delta"]), q, steps, str(p["accountant"]))
            feasible.append((q, steps))
        except PrivacyBudgetError as exc:
            first_error = first_error or str(exc)
    key = lambda c: (c[0], c[1])  # noqa: E731 - cost grows with both
    easiest, hardest = min(corners, key=key), max(corners, key=key)
    if not feasible:
        raise SpaceError(
            f"{space.source + ': ' if space.source else ''}no trial of this space can meet the privacy budget "
            f"epsilon={p['target_epsilon']}, delta={p['delta']}: even the smallest sample rate "
            f"{easiest[0]:.4g} with {easiest[1]} steps fails ({first_error})"
        )
    warnings = []
    if hardest not in feasible:
        warnings.append(
            f"some trials cannot meet epsilon={p['target_epsilon']} (e.g. q={hardest[0]:.4g}, {hardest[1]} steps); "
            "they are recorded as failed with val_accuracy 0 and do not stop the search"
        )
    return SpaceCheck(train_size, len(points), easiest, hardest, hardest in feasible, tuple(warnings))


# ------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _freeze(value: Any) -> Any:
    """Lists become tuples so distributions stay hashable and frozen."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _canon(value: Any) -> str:
    return json.dumps(_thaw(value), sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def train_size_of(space: SearchSpace) -> int:
    """Load the data set once (on the driver) to learn the training-set size the sample rate divides."""
    from eqdp_ray.data import load_dataset

    d = dict(space.data)
    data = load_dataset(
        d["name"],
        d.get("root"),
        download=bool(d.get("download", False)),
        val_size=d.get("val_size", 0.1),
        seed=int(space.fixed.get("seed", 0)),
        train_subset=d.get("train_subset"),
        test_subset=d.get("test_subset"),
    )
    return len(data.train_y)
