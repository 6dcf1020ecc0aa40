"""Reading compose YAML with the position of every key and item.

PyYAML's safe loader, adjusted to read like compose's YAML library (YAML 1.2 core
schema: ``yes``/``no``/``on``/``off`` stay strings, ``22:22`` is not a base-60 number),
with merge keys (``<<: *anchor``), compose's ``!reset`` / ``!override`` tags, and
duplicate keys refused. Mappings come back as :class:`YDict` and sequences as
:class:`YList`, which remember the file and line of each key or item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cargohold.errors import ComposeError


@dataclass(frozen=True, slots=True)
class Loc:
    """Where something was written: file and 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class YDict(dict[Any, Any]):
    """A mapping that remembers where it and each of its keys were written."""

    loc: Loc
    key_locs: dict[Any, Loc]

    def __init__(self, *args: Any, loc: Loc | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loc = loc or Loc("", 0)
        self.key_locs = {}

    def loc_of(self, key: Any) -> Loc:
        return self.key_locs.get(key, self.loc)


class YList(list[Any]):
    """A sequence that remembers where it and each of its items were written."""

    loc: Loc
    item_locs: list[Loc]

    def __init__(self, *args: Any, loc: Loc | None = None) -> None:
        super().__init__(*args)
        self.loc = loc or Loc("", 0)
        self.item_locs = []

    def loc_of(self, index: int) -> Loc:
        return self.item_locs[index] if 0 <= index < len(self.item_locs) else self.loc


class Reset:
    """``!reset``: remove what lower files said for this key."""

    def __repr__(self) -> str:
        return "!reset"


RESET = Reset()


@dataclass(frozen=True, slots=True)
class Override:
    """``!override value``: replace what lower files said instead of merging."""

    value: Any


class _Loader(yaml.SafeLoader):
    file_name: str = ""


# YAML 1.2 core schema for booleans, ints and floats (as compose's go-yaml v3 reads).
_Loader.yaml_implicit_resolvers = {
    key: [
        r
        for r in resolvers
        if r[0] not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _loc(loader: _Loader, node: Node) -> Loc:
    return Loc(loader.file_name, node.start_mark.line + 1)


def _construct_mapping(loader: _Loader, node: MappingNode) -> YDict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        if isinstance(key_node, ScalarNode):
            key = loader.construct_scalar(key_node)
            if key in seen:
                raise ComposeError(
                    f"mapping key {key!r} already defined at line {seen[key]}",
                    file=loader.file_name,
                    line=key_node.start_mark.line + 1,
                )
            seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    result = YDict(loc=_loc(loader, node))
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise ComposeError(
                "a mapping key must be a plain value", file=loader.file_name, line=key_node.start_mark.line + 1
            ) from None
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_locs[key] = _loc(loader, key_node)
    return result


def _construct_sequence(loader: _Loader, node: SequenceNode) -> YList:
    result = YList(loc=_loc(loader, node))
    for child in node.value:
        result.append(loader.construct_object(child, deep=True))
        result.item_locs.append(_loc(loader, child))
    return result


def _construct_reset(loader: _Loader, node: Node) -> Reset:
    return RESET


def _construct_override(loader: _Loader, node: Node) -> Override:
    if isinstance(node, MappingNode):
        return Override(_construct_mapping(loader, node))
    if isinstance(node, SequenceNode):
        return Override(_construct_sequence(loader, node))
    return Override(loader.construct_scalar(node) if isinstance(node, ScalarNode) else None)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Loader.add_constructor("!reset", _construct_reset)
_Loader.add_constructor("!override", _construct_override)


def _line_of(err: yaml.YAMLError) -> int | None:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def load_yaml(text: str, file_name: str) -> Any:
    """Parse one YAML document; malformed input raises :class:`ComposeError` with file and line."""
    loader = _Loader(text)
    loader.file_name = file_name
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ComposeError(f"invalid YAML: {problem}", file=file_name, line=_line_of(err)) from None
    except RecursionError:
        raise ComposeError("invalid YAML: nesting too deep", file=file_name) from None
    finally:
        loader.dispose()
    return data
