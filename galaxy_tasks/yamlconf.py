"""YAML configuration read so that every error can name its file and line.

PyYAML's safe loader, with two changes: a key given twice in one mapping is refused (plain
PyYAML keeps the last one silently), and every mapping remembers the line of each of its
keys, so a check far from the parser can still say `job_conf.yml:12: destinations.big...`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping

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
    """A place in a configuration: its file, its dotted path, its line (when known) and the
    data there (`node`), so that a place inside it can be found by its keys."""

    source: str
    path: str = ""
    line: int | None = None
    node: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def top(cls, source: str, data: Any) -> Where:
        """The whole document `data` read from `source`."""
        return cls(source, line=getattr(data, "line", None), node=data)

    def at(self, *keys: Hashable) -> Where:
        """The place of `node[key][key]...`: a mapping's key on that key's line, a list's item
        on its own. A key the data does not have is passed over (a pydantic error's location
        names the member of a union it tried)."""
        place = self
        for key in keys:
            node = place.node
            if isinstance(node, Mapping) and key in node:
                line = node.line_of(key) if isinstance(node, LineMap) else None
                path = f"{place.path}.{key}" if place.path else str(key)
                place = Where(place.source, path, line or place.line, node[key])
            elif isinstance(node, list) and type(key) is int and 0 <= key < len(node):
                item = node[key]
                place = Where(place.source, f"{place.path}[{key}]", getattr(item, "line", None) or place.line, item)
        return place

    def named(self, key: str) -> Where:
        """The place of `node[key]`, whether or not the data has that key (one that is missing)."""
        if isinstance(self.node, Mapping) and key in self.node:
            return self.at(key)
        return Where(self.source, f"{self.path}.{key}" if self.path else key, self.line)

    def error(self, message: str) -> ConfigError:
        at = f"{self.source}:{self.line}" if self.line is not None else self.source
        return ConfigError(f"{at}: {self.path}: {message}" if self.path else f"{at}: {message}")
