"""YAML reading with the two PyYAML traps closed.

* ``yaml.safe_load`` resolves ``1e-3`` as a *string* (YAML 1.1 wants ``1.0e-3``): the loader
  below resolves every YAML 1.2 float, so ``radius: 1e-3`` means 0.001.
* A duplicated mapping key silently keeps the last value: here it is an error naming the key.

Only ``SafeLoader`` is used: no Python object tags, no ``eval``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class YAMLError(ValueError):
    """A spec file that is not valid YAML, or has a duplicated key."""


class _StrictSafeLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
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


def load_yaml(source: str | Path) -> Any:
    """Parse YAML text, or the file at ``source`` if it is a ``Path``."""
    text = source.read_text() if isinstance(source, Path) else source
    try:
        return yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except YAMLError:
        raise
    except yaml.YAMLError as e:
        raise YAMLError(f"invalid YAML: {str(e).splitlines()[0]}") from None
