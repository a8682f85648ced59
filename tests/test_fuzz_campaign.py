"""Property-based tests of campaign.yaml: a hostile file is a valid Campaign or one clean ConfigError, never a crash.

Every rendered campaign (``render_campaign``, one per backend) is mutated: cut short, bytes flipped, text
inserted, lines duplicated (duplicate keys), values turned into aliases, nested deeply, swapped for values of
other types (text, integers, floats, lists, mappings, null, bools, nan, inf, huge numbers), keys added that no
section knows. ``load_campaign`` must then either return a Campaign whose every setting is of its type and
within its bounds, or raise a :class:`~nnmeter.errors.ConfigError` whose message is one line that starts with
the file's name (and names the key path when a key is at fault); any other exception, or an example slower than
:data:`DEADLINE`, fails. ``nnmeter.yamlfile.load_yaml`` is fuzzed directly too, with arbitrary text and bytes.

The example budget is fixed (the file runs in a few seconds). ``NNMETER_FUZZ_LONG=1`` multiplies it by
:data:`LONG_FACTOR` for a deep run::

    NNMETER_FUZZ_LONG=1 .venv/bin/python -m pytest -s tests/test_fuzz_campaign.py

``pytest -s`` shows how many cases each test tried.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import time
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnmeter.backends import backend_class, backend_names
from nnmeter.builder.campaign import SECTIONS, Campaign, load_campaign, render_campaign
from nnmeter.errors import ConfigError
from nnmeter.yamlfile import load_yaml

pytestmark = pytest.mark.unit

#: How many times more examples ``NNMETER_FUZZ_LONG=1`` runs.
LONG_FACTOR = 50
SCALE = LONG_FACTOR if os.environ.get("NNMETER_FUZZ_LONG") == "1" else 1
#: The longest one example may take (a load of a few KB of YAML takes milliseconds).
DEADLINE = datetime.timedelta(seconds=3)

#: Cases tried per kind, and how many of them loaded (the rest were ConfigErrors); printed when the module ends
#: (``pytest -s`` shows them).
TRIED: dict[str, list[int]] = {}


def fuzz_settings(examples: int) -> Any:
    return settings(
        max_examples=examples * SCALE,
        deadline=DEADLINE,
        database=None,  # no .hypothesis folder in the checkout
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    start = time.perf_counter()
    yield
    total = sum(tried for tried, _ in TRIED.values())
    rows = ", ".join(f"{name} {tried} ({valid} valid)" for name, (tried, valid) in TRIED.items())
    print(f"\nfuzz: {total} cases in {time.perf_counter() - start:.1f} s (x{SCALE}): {rows}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _rendered(backend: str) -> str:
    """The rendered campaign of ``backend``, with the one value a user must fill in (an SSH host)."""
    return re.sub(r"^(  host: )(\"\"|'')$", r"\1board.local", render_campaign(backend), count=1, flags=re.M)


BACKENDS = backend_names()
RENDERED = {name: _rendered(name) for name in BACKENDS}
TREES = {name: load_yaml(text, "rendered") for name, text in RENDERED.items()}

# --- the check ----------------------------------------------------------------------------------------------


def load_and_check(path: Path, name: str, at_fault: str | None = None) -> Campaign | ConfigError:
    """Load ``path``: a valid Campaign, or a ConfigError of one line naming the file (and ``at_fault``'s path)."""
    counts = TRIED.setdefault(name, [0, 0])
    counts[0] += 1
    try:
        campaign = load_campaign(path)
    except ConfigError as err:
        message = err.message
        assert message.startswith(f"{path}: "), message
        assert "\n" not in message and "\r" not in message, message
        assert "\n" not in err.hint, err.hint
        if err.key_path:
            assert message.startswith(f"{path}: {err.key_path}: "), message
        if at_fault is not None and err.key_path:
            # the file was valid but for the value at `at_fault`: the error is about it, or inside it
            assert err.key_path.startswith(at_fault) or at_fault.startswith(err.key_path), (at_fault, message)
        return err
    counts[1] += 1
    assert isinstance(campaign, Campaign)
    assert campaign.backend_name in BACKENDS
    assert_valid(campaign.backend_options)
    for key in SECTIONS:
        assert_valid(getattr(campaign, key))
    return campaign


def assert_valid(section: Any) -> None:
    """Every setting of ``section`` (and its nested sections) is of its type and within its bounds."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            assert_valid(value)
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            assert_typed(hints[f.name], item, f)


def assert_typed(hint: Any, value: Any, f: dataclasses.Field) -> None:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    scalars = [o for o in options if typing.get_origin(o) is None]
    lists = [typing.get_args(o)[0] for o in options if typing.get_origin(o) is list]
    if isinstance(value, bool):
        assert bool in scalars, (f.name, value)
        return
    if isinstance(value, (int, float)):
        assert int in scalars or float in scalars or any(t in (int, float) for t in lists), (f.name, value)
        assert math.isfinite(value), (f.name, value)
        lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
        assert lo is None or value >= lo, (f.name, value)
        assert hi is None or value <= hi, (f.name, value)
    else:
        assert isinstance(value, str), (f.name, value)
        assert str in scalars or str in lists, (f.name, value)
    choices = f.metadata.get("choices")
    assert choices is None or value in choices, (f.name, value)


# --- values of every type -----------------------------------------------------------------------------------

SPECIAL_NUMBERS = [math.nan, math.inf, -math.inf, 1e308, -0.0, 10**12, 10**9, 2**32, 2**63, -1, 0, 10**400]
SPECIAL_TEXT = ["0x70", "070", "0123", "auto", "", " ", "yes", "~", "null", ".nan", "a\nb", "\t", "é", "\u2028"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.sampled_from(SPECIAL_NUMBERS),
    st.text(max_size=30),
    st.sampled_from(SPECIAL_TEXT),
    st.binary(max_size=8),
    st.dates(),
)
keys = st.one_of(st.text(max_size=12), st.integers(min_value=-5, max_value=5), st.booleans(), st.none())
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=8,
)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value of any type, maybe nested in lists and mappings up to 40 levels deep."""
    value = draw(values)
    for _ in range(draw(st.integers(0, 40))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


def leaf_paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path of keys in ``tree`` (mappings only), sections and leaves alike."""
    paths = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            paths.append((*prefix, key))
            paths.extend(leaf_paths(value, (*prefix, key)))
    return paths


def dotted(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def write(workdir: Path, data: str | bytes) -> Path:
    path = workdir / "campaign.yaml"
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return path


# --- mutations of the data: one value swapped, one key added -------------------------------------------------


#: Values a setting may well take (the near-valid ones, to reach the checks past the type).
plausible = st.one_of(
    st.integers(-2, 300),
    st.floats(-0.5, 2.0),
    st.sampled_from(["auto", "cpu", "gpu", "min", "median", "wall", "litert", "accept-new", "70", "0x70", "CPU"]),
    st.lists(st.integers(-1, 4), max_size=3),
    st.lists(st.sampled_from(["conv", "fc", "relu", "conv-bn-relu", "mobilenetv1", "--x", 1]), max_size=3),
)


@fuzz_settings(150)
@given(backend=st.sampled_from(BACKENDS), data=st.data(), value=st.one_of(deep(), plausible))
def test_a_value_of_any_type_at_any_key(workdir: Path, backend: str, data: st.DataObject, value: Any) -> None:
    tree = load_yaml(RENDERED[backend], "rendered")
    path = data.draw(st.sampled_from(leaf_paths(tree)))
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        text = yaml.safe_dump(tree, sort_keys=False)
    except (yaml.YAMLError, ValueError):  # what PyYAML cannot write (an integer over 4300 digits)
        return
    at_fault = None if path == ("backend", "name") else dotted(path)
    load_and_check(write(workdir, text), "value swapped", at_fault)


@fuzz_settings(60)
@given(backend=st.sampled_from(BACKENDS), data=st.data(), key=keys, value=values)
def test_an_unknown_key_anywhere(workdir: Path, backend: str, data: st.DataObject, key: Any, value: Any) -> None:
    tree = load_yaml(RENDERED[backend], "rendered")
    mappings = [()] + [p for p in leaf_paths(tree) if isinstance(_at(tree, p), dict)]
    path = data.draw(st.sampled_from(mappings))
    node = _at(tree, path)
    if key in node or key == "name" and path == ("backend",):
        return
    node[key] = value
    result = load_and_check(write(workdir, yaml.safe_dump(tree, sort_keys=False)), "unknown key")
    assert isinstance(result, ConfigError), result
    assert "unknown" in result.message or "removed" in result.message, result  # protocol.cache: removed


def _at(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


# --- mutations of the text ----------------------------------------------------------------------------------

LINE = re.compile(r"^(\s*)([A-Za-z_]+): (\S.*)$")
HOSTILE_LITERALS = [
    "0x70", "070", "0123", "0b_", "0x_", ".nan", ".NaN", ".inf", "-.inf", "1e999", "1.0e+999", "9" * 5000,
    "0x" + "f" * 3000, "yes", "off", "~", "", "[]", "{}", "[[[[[[[[", "}", "!!binary AAAA", "!!binary !!",
    "!!python/object/apply:os.system ['true']", "!!timestamp x", "!!bool maybe", "!!int x", "!!float .",
    "!!set {a}", "!!omap [a]", "!!map x", "2024-13-01", "2024-01-31", "12:30:45", "&a 1", "*a", "<<: {}",
    "'unterminated", '"\\x"', "|", ">-", "- 1", "\t1", "%YAML 1.1", "---", "...", "? x", "!local x", "@", "`",
    "1_000", "+1", "-0", "0o17", "1:2", "1.5", "true", "null", "'0x70'", '"070"',
]  # fmt: skip


@st.composite
def mutated_text(draw: st.DrawFn) -> tuple[str, bytes]:
    """A rendered campaign with 1 to 4 mutations of its text or bytes, and what they were."""
    backend = draw(st.sampled_from(BACKENDS))
    text = RENDERED[backend]
    done = []
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        keyed = [i for i, line in enumerate(lines) if LINE.match(line)]
        kind = draw(
            st.sampled_from(["truncate", "insert", "duplicate", "alias", "nest", "literal", "unknown", "bytes"])
        )
        done.append(kind)
        if kind == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif kind == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.text(max_size=20)) + text[at:]
        elif kind == "bytes":
            break  # applied to the encoded text below
        elif not keyed:
            continue
        elif kind == "duplicate":
            i = draw(st.sampled_from(keyed))
            lines.insert(draw(st.sampled_from(keyed)) + 1, lines[i])
        elif kind == "alias":
            i, j = draw(st.sampled_from(keyed)), draw(st.sampled_from(keyed))
            indent, key, value = LINE.match(lines[i]).groups()  # type: ignore[union-attr]
            lines[i] = f"{indent}{key}: &a {value}"
            indent, key, _ = LINE.match(lines[j]).groups()  # type: ignore[union-attr]
            lines[j] = f"{indent}{key}: *a"
        elif kind == "nest":
            i, depth = draw(st.sampled_from(keyed)), draw(st.integers(1, 60))
            indent, key, value = LINE.match(lines[i]).groups()  # type: ignore[union-attr]
            if draw(st.booleans()):
                lines[i] = f"{indent}{key}: " + "[" * depth + value + "]" * depth
            else:
                lines[i] = f"{indent}{key}: " + "{k: " * depth + value + "}" * depth
        elif kind == "literal":
            i = draw(st.sampled_from(keyed))
            indent, key, _ = LINE.match(lines[i]).groups()  # type: ignore[union-attr]
            lines[i] = f"{indent}{key}: {draw(st.sampled_from(HOSTILE_LITERALS))}"
        elif kind == "unknown":
            i = draw(st.sampled_from(keyed))
            indent = LINE.match(lines[i]).group(1)  # type: ignore[union-attr]
            lines.insert(i + 1, f"{indent}{draw(st.sampled_from(['thread', 'zzz', 'Rounds', 'name', '1']))}: 1")
        text = "\n".join(lines)
    raw = text.encode("utf-8", "surrogatepass")
    if done and done[-1] == "bytes" and raw:
        flips = draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1, max_size=8))
        buffer = bytearray(raw)
        for at, byte in flips:
            buffer[at] = byte
        raw = bytes(buffer)
    return " ".join(done), raw


@fuzz_settings(250)
@given(case=mutated_text())
def test_a_mutated_rendered_campaign(workdir: Path, case: tuple[str, bytes]) -> None:
    _, raw = case
    load_and_check(write(workdir, raw), "text mutated")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_rendered_campaigns_load(workdir: Path, backend: str) -> None:
    campaign = load_and_check(write(workdir, RENDERED[backend]), "rendered")
    assert isinstance(campaign, Campaign) and campaign.backend_options == backend_class(backend).Config(
        **({"host": "board.local"} if "host" in TREES[backend]["backend"] else {})
    )


# --- load_yaml on anything ----------------------------------------------------------------------------------

YAML_ALPHABET = list("{}[]:,-&*!|>'\"#?%@` \n\t0123456789abxyz.<~=+_\\") + ["\x00", "\ufeff", "\u2028", "é"]


def check_load_yaml(data: str | bytes, name: str) -> None:
    counts = TRIED.setdefault(name, [0, 0])
    counts[0] += 1
    try:
        load_yaml(data, "fuzz.yaml")
        counts[1] += 1
    except ConfigError as err:
        assert err.message.startswith("fuzz.yaml: "), err.message
        assert "\n" not in err.message and "\r" not in err.message, err.message
        assert err.key_path == ""


@fuzz_settings(150)
@given(text=st.text(alphabet=st.sampled_from(YAML_ALPHABET), max_size=200))
def test_load_yaml_on_yaml_like_text(text: str) -> None:
    check_load_yaml(text, "load_yaml yaml-like")


@fuzz_settings(100)
@given(data=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_load_yaml_on_any_text_or_bytes(data: str | bytes) -> None:
    check_load_yaml(data, "load_yaml any")


@fuzz_settings(50)
@given(
    prefix=st.sampled_from(["", "a: ", "- ", "? "]),
    opener=st.sampled_from(["[", "{a: ", "- ", "  - ", "? "]),
    depth=st.integers(1, 200),
)
def test_load_yaml_on_deep_nesting(prefix: str, opener: str, depth: int) -> None:
    closer = {"[": "]", "{a: ": "}"}.get(opener, "")
    if opener.endswith("- ") or opener == "? ":
        text = prefix + "".join("\n" + "  " * i + opener for i in range(depth)) + "1\n"
    else:
        text = prefix + opener * depth + "1" + closer * depth + "\n"
    check_load_yaml(text, "load_yaml nesting")
