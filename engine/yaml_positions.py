"""YAML with positions: a document, and where each of its values was written.

`load_positioned(text, source)` parses with the safe loader and returns the data with a
`Positions`: for every key path (`model_list[2].litellm_params.model`, `tests[0].expect`)
the 1-based line and column of its key (of the item, in a list), and the span of its
key and of its value. A syntax error is a `YamlSyntaxError` whose text reads
`file:line:col: invalid YAML: problem`. The LiteLLM config reader (`engine.migrate.config`)
and the policy test files (`engine.policytest.spec`) read YAML this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.errors import PolicyctlError

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True, slots=True)
class Place:
    """Where a key or a value was written: 1-based start line and column, and its end."""

    line: int
    col: int
    end_line: int
    end_col: int


def _place(node: yaml.Node) -> Place:
    start, end = node.start_mark, node.end_mark
    return Place(start.line + 1, start.column + 1, end.line + 1, end.column + 1)


class YamlSyntaxError(PolicyctlError, located=True):
    """Text that is not YAML: `file:line:col: invalid YAML: problem` (line and column when
    the parser gives them)."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        self.line = line
        self.col = col
        super().__init__(message)


@dataclass
class Positions:
    """The position of every mapping key and sequence item, by key path: `at` (line and
    column of the key, or of the item in a list), `key()` and `value()` (their spans), and
    the keys a mapping repeats (YAML keeps only the last one)."""

    at: dict[str, tuple[int, int]] = field(default_factory=dict)
    duplicates: list[tuple[str, Place]] = field(default_factory=list)
    _keys: dict[str, yaml.Node] = field(default_factory=dict)
    _values: dict[str, yaml.Node] = field(default_factory=dict)
    _seen: set[int] = field(default_factory=set)

    def key(self, path: str) -> Place | None:
        """Where the key at `path` (the item, in a list) was written."""
        node = self._keys.get(path)
        return None if node is None else _place(node)

    def value(self, path: str) -> Place | None:
        """Where the value at `path` was written."""
        node = self._values.get(path)
        return None if node is None else _place(node)

    def walk(self, node: yaml.Node, path: str) -> None:
        # an alias is the node it names: walk each node once (the first path that reaches
        # it), or `&a [*b, *b, …]` chains would take exponential time
        if id(node) in self._seen:
            return
        self._seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            names: set[str] = set()
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                    continue
                child = f"{path}.{key.value}" if path else str(key.value)
                if key.value in names:
                    self.duplicates.append((child, _place(key)))
                names.add(key.value)
                self.at.setdefault(child, (key.start_mark.line + 1, key.start_mark.column + 1))
                self._keys.setdefault(child, key)
                self._values.setdefault(child, value)
                self.walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                child = f"{path}[{i}]"
                self.at.setdefault(child, (item.start_mark.line + 1, item.start_mark.column + 1))
                self._keys.setdefault(child, item)
                self._values.setdefault(child, item)
                self.walk(item, child)


try:  # the C loader when PyYAML was built with libyaml
    _FAST: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _FAST = yaml.SafeLoader


def load_positioned(text: str, source: str, *, fast: bool = False) -> tuple[Any, Positions]:
    """The document in `text` (None when empty) and its positions; raises YamlSyntaxError.
    `fast`: libyaml's loader when PyYAML has it (its error messages are worded a little
    differently from the pure-Python loader's)."""
    positions = Positions()
    loader = _FAST(text) if fast else yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, positions
        data = loader.construct_document(node)
        positions.walk(node, "")
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = err.problem or err.context or "not YAML"
        raise YamlSyntaxError(
            f"{where}: invalid YAML: {problem}",
            None if mark is None else mark.line + 1,
            None if mark is None else mark.column + 1,
        ) from None
    except yaml.YAMLError as err:
        raise YamlSyntaxError(f"{source}: invalid YAML: {err}") from None
    except RecursionError:
        raise YamlSyntaxError(f"{source}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()
    return data, positions
