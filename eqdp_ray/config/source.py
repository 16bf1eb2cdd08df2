"""Reading a YAML file with the line of every key, so that every error can point at the line to edit.

Both run configs and search spaces are read here: a path that is not a regular file, a file that
is not UTF-8, malformed YAML, a duplicated key or a top level that is not a mapping each end in one
`ConfigError` naming the file (and the line).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eqdp_ray.config.errors import ConfigError

KeyPath = tuple[str, ...]


@dataclass
class Source:
    """Where each key came from: a file line, a `--set` override, or plain data built in Python."""

    name: str | None = None  # file name, or None for a dict built in Python
    lines: dict[KeyPath, int] = field(default_factory=dict)
    # key path set by an override -> that override's key as the user typed it after `--set`
    overridden: dict[KeyPath, str] = field(default_factory=dict)

    def override_of(self, path: KeyPath) -> str | None:
        """The `--set` key that set `path`, a key above it or a key inside it (None: no override did)."""
        for o in sorted(self.overridden):
            if o[: len(path)] == path or path[: len(o)] == o:
                return self.overridden[o]
        return None

    def where(self, path: KeyPath) -> str:
        """The prefix of an error about `path`: `file:line: 'dotted.key': ` (or the override that set it)."""
        dotted = ".".join(path)
        named = f"'{dotted}': " if dotted else ""
        override = self.override_of(path)
        if override is not None:
            return f"--set {override}: " + ("" if override == dotted else named)
        for i in range(len(path), 0, -1):
            if path[:i] in self.lines:
                prefix = f"{self.name}:" if self.name else "line "
                return f"{prefix}{self.lines[path[:i]]}: {named}"
        return f"{self.name}: {named}" if self.name else named

    def origin(self, path: KeyPath, *, file: bool = True) -> str:
        """Where `path` was set, for a message about another key: `--set k`, `file.yaml:12`, `line 12` or '?'.

        `file=False` when the message already names the file: `line 12`.
        """
        override = self.override_of(path)
        if override is not None:
            return f"--set {override}"
        if path in self.lines:
            return f"{self.name}:{self.lines[path]}" if self.name and file else f"line {self.lines[path]}"
        return "?"


def _record_lines(node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int], file: str, error: type) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise error(f"{file}:{line}: duplicate key '{'.'.join(prefix + (key,))}' (first at line {seen[key]})")
            seen[key] = line
            lines[prefix + (key,)] = line
            _record_lines(value_node, prefix + (key,), lines, file, error)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, prefix + (str(i),), lines, file, error)


def read_yaml(path: str | Path, what: str = "config", error: type[ConfigError] = ConfigError) -> tuple[dict, Source]:
    """The top-level mapping of a YAML file and the line of each key; `what` names the file in errors."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a directory; pass a {what} file (.yaml)")
    if not path.is_file():
        raise error(f"{what} file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not a UTF-8 text file (byte {exc.start}); save it as UTF-8 YAML") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} file: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{path}{where}: malformed YAML: {problem}") from None
    source = Source(name=str(path))
    if node is not None:
        _record_lines(node, (), source.lines, str(path), error)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data, source
