"""`--set key.sub=value` overrides, parsed in one place for run configs and search spaces alike."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from eqdp_ray.config.errors import ConfigError
from eqdp_ray.config.source import KeyPath, Source


def parse_assignment(item: str, error: type[ConfigError] = ConfigError) -> tuple[str, Any]:
    """`key=value` -> (key, value), the value read as a YAML scalar or flow collection."""
    if "=" not in item:
        raise error(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise error(f"--set {item!r}: the key must be dotted names, e.g. training.lr=0.5")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key, value


def _split_dotted(node: dict[str, Any], parts: list[str]) -> list[str]:
    """Inside a block whose keys are dotted config keys: the longest existing key first, then the rest."""
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in node:
            return [".".join(parts[:i])] + parts[i:]
    return [".".join(parts)]


def apply_overrides(
    data: dict[str, Any],
    overrides: Iterable[str],
    source: Source | None = None,
    *,
    dotted_blocks: tuple[str, ...] = (),
    whole_blocks: tuple[str, ...] = (),
    error: type[ConfigError] = ConfigError,
) -> dict[str, Any]:
    """Apply overrides to nested data in place, recording each in `source` so errors name the `--set`.

    Directly under a block of `dotted_blocks` (a space's `fixed` and `search`) the keys are dotted
    config keys themselves: `search.training.lr.high=3` sets `high` of the searched `training.lr`.
    Under a block of `whole_blocks` a key that is not there yet must be set as a whole mapping.
    The same key given twice, or a key and a key inside it, is refused: which one wins would
    depend on their order on the command line.
    """
    given: dict[KeyPath, str] = {}  # key path -> the override that set it
    for item in overrides:
        key, value = parse_assignment(item, error)
        parts = key.split(".")
        node: dict[str, Any] = data
        path: KeyPath = ()
        while len(parts) > 1:
            head = parts.pop(0)
            child = node.setdefault(head, {})
            if not isinstance(child, dict):
                raise error(f"--set {key}: '{'.'.join(path + (head,))}' is not a mapping")
            node, path = child, path + (head,)
            if path in {(b,) for b in dotted_blocks}:
                parts = _split_dotted(node, parts)
                if path in {(b,) for b in whole_blocks} and parts[0] not in node and not isinstance(value, dict):
                    raise error(
                        f"--set {key}: no key of '{path[0]}' matches '{parts[0]}'; add it to the file, "
                        f"or set it as a whole: {path[0]}.<key>={{type: ..., ...}}"
                    )
        target = path + (parts[0],)
        for seen, earlier in given.items():
            if seen == target:
                raise error(f"--set {key} is given twice ({earlier!r}, then {item!r}); give it once")
            if seen[: len(target)] == target or target[: len(seen)] == seen:
                raise error(
                    f"--set {key}: overlaps the earlier --set {earlier!r} (one key holds the other); "
                    "give the value once, either as the whole mapping or key by key"
                )
        given[target] = item
        node[parts[0]] = value
        if source is not None:
            source.overridden[target] = key
    return data
