"""The spec loader refuses hostile YAML (alias bombs, deep nesting, big files) cheaply.

The documents are generated over each family's parameters, so a test covers the class of
problem rather than one file; the limits come from the module, so these tests follow them.
The expensive families are also measured in a fresh process with a memory cap: a regression
to expanding the document fails there with numbers, instead of taking this machine's memory.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainers import _yaml
from trainers._yaml import MAX_BYTES, MAX_DEPTH, MAX_NODES, YAMLError, load_yaml

NODES = re.escape(f"YAML expands to more than {MAX_NODES} nodes")
DEEP = re.escape(f"YAML nesting deeper than {MAX_DEPTH} levels")
BIG = re.escape(f"files larger than {MAX_BYTES} bytes")


# ---- generators of the families (also used by tests/test_security.py) ----


def laughs(depth: int, width: int) -> str:
    """The "billion laughs": level i is a list of ``width`` aliases of level i - 1."""
    lines = ['l0: &l0 "lol"']
    for i in range(1, depth + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def laughs_nodes(depth: int, width: int) -> int:
    """Nodes of ``laughs(depth, width)`` with every alias expanded: mapping, keys, values."""
    size, total = 1, 1 + 2  # the mapping; key and value of l0
    for _ in range(depth):
        size = 1 + width * size
        total += 1 + size
    return total


def merge_laughs(depth: int, width: int) -> str:
    """The same bomb through merge keys: each mapping merges ``width`` copies of the last."""
    lines = ["m0: &m0 {x: 1}"]
    for i in range(1, depth + 1):
        lines.append(f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * width) + "]}")
    return "\n".join(lines) + "\n"


def flow_lists(depth: int) -> str:
    return "[" * depth + "0" + "]" * depth


def block_lists(depth: int) -> str:
    return "- " * depth + "x\n"


def block_mappings(depth: int) -> str:
    lines = [f"{'  ' * i}k{i}:" for i in range(depth - 1)]
    return "\n".join([*lines, f"{'  ' * (depth - 1)}k{depth - 1}: v"]) + "\n"


def flow_mappings(depth: int) -> str:
    return "{a: " * depth + "1" + "}" * depth


def flat_list(nodes: int) -> str:
    """A block list whose document has exactly ``nodes`` nodes (the list and its items)."""
    return "- 1\n" * (nodes - 1)


NESTINGS = {
    "flow_lists": flow_lists,
    "block_lists": block_lists,
    "block_mappings": block_mappings,
    "flow_mappings": flow_mappings,
}


def refused(text: str | Path) -> str:
    with pytest.raises(YAMLError) as info:
        load_yaml(text)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- alias expansion ----


@pytest.mark.parametrize(
    ("depth", "width"),
    [(9, 10), (30, 2), (4, 100), (2, 200), (3, 25), (12, 2), (11, 2), (6, 4), (2, 90)],
)
def test_alias_bombs_are_refused_exactly_when_they_expand_past_the_node_limit(depth, width):
    text = laughs(depth, width)
    if laughs_nodes(depth, width) > MAX_NODES:
        assert re.search(NODES, refused(text))
    else:
        doc = load_yaml(text)
        leaf = doc[f"l{depth}"]
        for _ in range(depth):
            assert len(leaf) == width
            leaf = leaf[0]
        assert leaf == "lol"


# Small bombs only in this process: PyYAML's merging copies width**depth pairs (the measured
# test below runs a big one in a capped process).
@pytest.mark.parametrize(("depth", "width"), [(5, 10), (14, 2), (2, 120)])
def test_alias_bombs_through_merge_keys_are_refused(depth, width):
    assert re.search(NODES, refused(merge_laughs(depth, width)))


@pytest.mark.parametrize(
    "text", ["a: &a [1, *a]\n", "a: &a {x: *a}\n", "a: &a [[[*a]]]\n", "&a {b: [*a]}\n"]
)
def test_recursive_aliases_are_refused(text):
    assert "recursive aliases are refused" in refused(text)


def test_the_node_limit_counts_every_node_not_only_aliases():
    assert isinstance(load_yaml(flat_list(MAX_NODES)), list)
    assert re.search(NODES, refused(flat_list(MAX_NODES + 1)))
    pairs = (MAX_NODES - 1) // 2  # a mapping of n pairs has 1 + 2 n nodes
    assert len(load_yaml("".join(f"k{i}: {i}\n" for i in range(pairs)))) == pairs
    assert re.search(NODES, refused("".join(f"k{i}: {i}\n" for i in range(pairs + 1))))


# ---- nesting ----


@pytest.mark.parametrize("family", sorted(NESTINGS))
@pytest.mark.parametrize("depth", [1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 5 * MAX_DEPTH])
def test_nesting_is_refused_exactly_past_the_depth_limit(family, depth):
    text = NESTINGS[family](depth)
    if depth <= MAX_DEPTH:
        doc = load_yaml(text)
        for _ in range(depth):
            doc = doc[0] if isinstance(doc, list) else next(iter(doc.values()))
        assert not isinstance(doc, list | dict)
    else:
        message = refused(text)
        assert re.search(DEEP, message) and "RecursionError" not in message


@pytest.mark.parametrize("height", [1, 10, MAX_DEPTH - 2])
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_nesting_through_an_alias_counts_the_nesting_it_repeats(height, extra):
    # a: the root mapping (1) holds a list `height` deep; b holds `wrap` lists around *a,
    # so *a expands to depth 1 + wrap + height, which is the limit plus `extra`.
    wrap = MAX_DEPTH - 1 - height + extra
    text = f"a: &a {flow_lists(height)}\nb: {'[' * wrap}*a{']' * wrap}\n"
    if extra <= 0:
        assert load_yaml(text)["a"] == json.loads(flow_lists(height))
    else:
        assert re.search(DEEP, refused(text))


# ---- size ----


def test_a_file_over_the_size_limit_is_refused_and_one_at_it_is_read(tmp_path):
    at = tmp_path / "at.yaml"
    at.write_bytes(b"x: 1\n" + b"#" * (MAX_BYTES - 6) + b"\n")
    assert at.stat().st_size == MAX_BYTES and load_yaml(at) == {"x": 1}
    over = tmp_path / "over.yaml"
    over.write_bytes(at.read_bytes() + b"\n")
    assert re.search(BIG, refused(over))
    assert re.search(BIG, refused(over.read_text()))  # text is held to the same limit


# ---- the rest of the loader's behaviour is unchanged ----


def test_floats_duplicates_tags_and_bad_scalars_keep_their_one_line_errors(tmp_path):
    assert load_yaml("lr: 1e-3\nwd: 5E-4\nn: 10\n") == {"lr": 0.001, "wd": 0.0005, "n": 10}
    assert "duplicate key 'lr'" in refused("lr: 1\nlr: 2\n")
    assert "invalid YAML" in refused("x: !!python/object/apply:os.system ['true']\n")
    assert "invalid YAML" in refused("x: [1, 2\n")
    assert "invalid YAML value" in refused("x: 2001-13-45\n")
    assert "invalid YAML value" in refused("x: " + "1" * 5000 + "\n")
    (tmp_path / "utf16.yaml").write_bytes("x: é\n".encode("utf-16"))
    assert load_yaml(tmp_path / "utf16.yaml") == {"x": "é"}
    (tmp_path / "latin1.yaml").write_bytes("x: é\n".encode("latin-1"))
    assert "invalid YAML" in refused(tmp_path / "latin1.yaml")


# ---- time and memory, measured in a fresh capped process ----

_MEASURE = r"""
import importlib.util, json, resource, sys, time
from pathlib import Path


def peak_rss_mb():
    # This process's own high-water mark: ru_maxrss would start at the parent's (pytest with
    # torch, hundreds of MB), since Linux carries it over fork and exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# No more than 1 GiB of address space: an expanding loader dies here, not the machine.
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
# The loader alone (no torch behind trainers/__init__), so the memory measured is the load's.
spec = importlib.util.spec_from_file_location("flatsweep_yaml", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
rss0 = peak_rss_mb()
t = time.perf_counter()
try:
    mod.load_yaml(Path(sys.argv[2]))
    outcome = "accepted"
except ValueError as e:
    outcome = str(e)
seconds = time.perf_counter() - t
rss_mb = peak_rss_mb() - rss0
print(json.dumps({"outcome": outcome, "seconds": seconds, "rss_growth_mb": rss_mb}))
"""

# The worst of each family that the limits allow, and far past them: (document, the refusal
# expected or None for accepted). Bytes documents are written as they are.
MEASURED: dict[str, tuple[str | bytes, str | None]] = {
    "laughs_9x10": (laughs(9, 10), NODES),
    "laughs_30x2": (laughs(30, 2), NODES),
    "laughs_4x100": (laughs(4, 100), NODES),
    "merge_laughs_9x10": (merge_laughs(9, 10), NODES),
    "flow_lists_filling_the_file": (flow_lists(MAX_BYTES // 2 - 1), DEEP),
    "block_mappings_300": (block_mappings(300), DEEP),
    "list_past_the_node_limit": (flat_list(MAX_BYTES // 5), NODES),
    "file_one_byte_over": (b"#" * MAX_BYTES + b"\n", BIG),
    "newlines_at_the_size_limit": (b"\n" * (MAX_BYTES - 4) + b"x: 1", None),
    "list_at_the_node_limit": (flat_list(MAX_NODES), None),
    "nesting_at_the_depth_limit": (flow_lists(MAX_DEPTH), None),
    "laughs_under_the_node_limit": (laughs(11, 2), None),
    # Refused from its size, never read: 4 GiB (sparse) is past the child's 1 GiB cap.
    "sparse_4_gib": (b"", BIG),
    # Endless and sizeless (st_size 0): read no further than the limit.
    "dev_zero": (b"", BIG),
}


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_every_family_is_refused_or_accepted_in_seconds_with_bounded_memory(tmp_path, name):
    text, expected = MEASURED[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    if name == "sparse_4_gib":
        with path.open("wb") as f:
            f.truncate(4 << 30)
    elif name == "dev_zero":
        path = Path("/dev/zero")
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, _yaml.__file__, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(run.stdout)
    if expected is None:
        assert r["outcome"] == "accepted", r
    else:
        assert re.search(expected, r["outcome"]), r
    assert r["seconds"] < 5, r
    assert r["rss_growth_mb"] < 200, r
