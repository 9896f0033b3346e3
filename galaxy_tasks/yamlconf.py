"""YAML configuration read so that every error can name its file and line.

PyYAML's safe loader, with two changes: a key given twice in one mapping is refused (plain
PyYAML keeps the last one silently), and every mapping remembers the line of each of its
keys, so a check far from the parser can still say `job_conf.yml:12: destinations.big...`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

import yaml
from yaml.nodes import MappingNode

from galaxy_tasks.errors import ConfigError


class LineMap(dict[Any, Any]):
    """A YAML mapping that knows the line (1-based) of the mapping and of each key."""

    line: int | None = None
    key_lines: dict[Hashable, int]

    def line_of(self, key: Hashable) -> int | None:
        return getattr(self, "key_lines", {}).get(key, self.line)


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> LineMap:
        self.flatten_mapping(node)
        result = LineMap()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found an unhashable key",
                    key_node.start_mark) from None
            if key in result:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice "
                                  f"(first on line {result.key_lines[key]})")
            result[key] = self.construct_object(value_node, deep=deep)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _Loader.construct_mapping)


def loads(text: str, source: str = "<string>") -> Any:
    """Parse YAML text; errors name `source` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from None


def read(path: Path) -> Any:
    """A YAML file's data, or a ConfigError that names the file and what is wrong."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    return loads(text, str(path))


@dataclass(frozen=True)
class Where:
    """A place in a configuration: its file, its dotted path and (when known) its line."""

    source: str
    path: str = ""
    line: int | None = None

    def key(self, container: Any, key: Hashable, name: str | None = None) -> Where:
        """The place of `container[key]`, named `name` (default: the key) in the path."""
        line = container.line_of(key) if isinstance(container, LineMap) else None
        label = str(key) if name is None else name
        path = f"{self.path}.{label}" if self.path and not label.startswith("[") else f"{self.path}{label}"
        return Where(self.source, path, line if line is not None else self.line)

    def unknown(self, container: Any, key: Hashable) -> ConfigError:
        """`container` (the mapping here) has a key it should not."""
        line = container.line_of(key) if isinstance(container, LineMap) else self.line
        return Where(self.source, self.path, line).error(f"unknown key {key!r}")

    def error(self, message: str) -> ConfigError:
        at = f"{self.source}:{self.line}" if self.line is not None else self.source
        return ConfigError(f"{at}: {self.path}: {message}" if self.path else f"{at}: {message}")
