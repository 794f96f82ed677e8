"""YAML reading with PyYAML's traps closed and hostile documents refused cheaply.

* ``yaml.safe_load`` resolves ``1e-3`` as a *string* (YAML 1.1 wants ``1.0e-3``): the loader
  below resolves every YAML 1.2 float, so ``radius: 1e-3`` means 0.001.
* A duplicated mapping key silently keeps the last value: here it is an error naming the key.
* A spec is user input that may reach a cluster, so size is bounded before anything is built:
  the file (``MAX_BYTES``, checked before it is read), the nesting depth (``MAX_DEPTH``) and
  the number of nodes once every alias is expanded (``MAX_NODES``: a "billion laughs" file of
  1 KB names 10**9 nodes). Depth and node count are enforced while PyYAML *composes* the node
  graph, before any Python object exists, so a refusal costs time and memory proportional to
  the limits, not to the expansion; they also bound everything downstream (pydantic, JSON,
  MLflow), which walks the expanded tree recursively.

Only ``SafeLoader`` is used: no Python object tags, no ``eval``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent

# Limits, each far above any real spec (examples/paper/*.yaml: 1.5 KB, 113 nodes, 4 deep) and
# low enough that PyYAML (pure Python, about 20k nodes or 400 KB a second on a busy core)
# refuses or accepts the worst file within about a second.
#: Largest spec file read, in bytes (256 KiB).
MAX_BYTES = 256 * 1024
#: Deepest nesting of sequences and mappings, in levels, aliases expanded.
MAX_DEPTH = 64
#: Most nodes (scalars, sequences, mappings, keys included) with every alias expanded at each
#: use.
MAX_NODES = 10_000

_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class YAMLError(ValueError):
    """A spec file that is not valid YAML, has a duplicated key, or exceeds a size limit."""


def _at(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}" if mark is not None else ""


class _StrictSafeLoader(yaml.SafeLoader):
    """``SafeLoader`` with YAML 1.2 floats, duplicate keys refused, and the depth and node
    limits enforced while composing (one instance per document)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._nodes = 0  # nodes composed so far, each alias counted as its expanded size
        self._depth = 0  # collections open around the node being composed
        self._heights: list[int] = []  # per open collection: the tallest child so far
        # (expanded size, height) of every anchored node, known once it is fully composed
        self._measured: dict[int, tuple[int, int]] = {}

    def _count(self, n: int, mark: yaml.Mark) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise YAMLError(
                f"YAML expands to more than {MAX_NODES} nodes{_at(mark)} (an alias counts "
                "every node it repeats); larger documents are refused"
            )

    def _deeper_than_limit(self, mark: yaml.Mark) -> YAMLError:
        return YAMLError(
            f"YAML nesting deeper than {MAX_DEPTH} levels{_at(mark)} is refused (an alias "
            "counts the nesting it repeats)"
        )

    def _note_height(self, height: int) -> None:
        if self._heights:
            self._heights[-1] = max(self._heights[-1], height)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # Size and depth are checked here, before PyYAML recurses into a collection or hands
        # back an alias (a shared node that every later consumer walks once per use).
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's own error below
                measured = self._measured.get(id(target))
                if measured is None:
                    raise YAMLError(
                        f"YAML alias *{event.anchor}{_at(event.start_mark)} is used inside "
                        "the node it names; recursive aliases are refused"
                    )
                size, height = measured
                if self._depth + height > MAX_DEPTH:
                    raise self._deeper_than_limit(event.start_mark)
                self._count(size, event.start_mark)
                self._note_height(height)
            return super().compose_node(parent, index)

        start = self._nodes
        self._count(1, event.start_mark)
        if not isinstance(event, SequenceStartEvent | MappingStartEvent):
            node = super().compose_node(parent, index)
            height = 0
        else:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise self._deeper_than_limit(event.start_mark)
            self._heights.append(0)
            node = super().compose_node(parent, index)
            height = 1 + self._heights.pop()
            self._depth -= 1
        self._note_height(height)
        if event.anchor is not None:
            self._measured[id(node)] = (self._nodes - start, height)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:  # a list or a mapping as a key (``? [a, b]``): one line, not a trace
                line = key_node.start_mark.line + 1
                raise YAMLError(
                    f"a key at line {line} is a {type(key).__name__}; keys must be names"
                ) from None
            if key in seen:
                line = key_node.start_mark.line + 1
                raise YAMLError(f"duplicate key {key!r} at line {line}; each key may appear once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Replace the float resolver (SafeLoader's yaml_implicit_resolvers is shared class state: copy).
_StrictSafeLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictSafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _too_big(size: int) -> YAMLError:
    return YAMLError(
        f"YAML is {size} bytes; files larger than {MAX_BYTES} bytes "
        f"({MAX_BYTES // 1024} KiB) are refused"
    )


def _read_bounded(path: Path) -> bytes:
    """The file's bytes, refused from its size before reading, and never more than the limit
    read (a FIFO or a device reports no size)."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BYTES:
            raise _too_big(size)
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise _too_big(len(data))
    return data


def load_yaml(source: str | Path) -> Any:
    """Parse YAML text, or the file at ``source`` if it is a ``Path``.

    Raises ``YAMLError`` (a ``ValueError``) with a one-line message for invalid YAML, a
    duplicated key, or a document over ``MAX_BYTES``, ``MAX_DEPTH`` or ``MAX_NODES``.
    """
    if isinstance(source, Path):
        # Bytes, so PyYAML detects UTF-8/UTF-16 itself and reports undecodable input as YAML.
        text: str | bytes = _read_bounded(source)
    else:
        text = source
        # Too many characters is too many bytes: refused without encoding a copy first.
        size = len(text) if len(text) > MAX_BYTES else len(text.encode())
        if size > MAX_BYTES:
            raise _too_big(size)
    try:
        return yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except YAMLError:
        raise
    except yaml.YAMLError as e:
        raise YAMLError(f"invalid YAML: {str(e).splitlines()[0]}") from None
    except ValueError as e:  # a scalar the safe constructors refuse: 2001-13-45, 5000 digits
        raise YAMLError(f"invalid YAML value: {str(e).splitlines()[0]}") from None
