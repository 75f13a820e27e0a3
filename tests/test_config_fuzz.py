"""Fuzzing the config loader: whatever an admin saves, ``check`` answers ``file:line: message`` (issue 5 item 4).

The documents are the example config (config/gateway.yaml, rules.yaml, people.yaml)
mutated by Hypothesis: values replaced by values of the wrong type or out of
range, keys removed or added, whole sections replaced, YAML-level oddities
(tags such as ``!!set`` and ``!!binary``, anchors, merge keys, odd quoting)
spliced in, and the text itself corrupted character by character. The loader
must either accept the files or raise :class:`ConfigError`, never anything else,
and every problem must name ``file:line: `` of a file it was given.
"""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import load_config
from gateway.yamlsrc import ConfigError

CONFIG = Path(__file__).resolve().parent.parent / "config"
EXAMPLES = {name: yaml.safe_load((CONFIG / name).read_text()) for name in ("gateway.yaml", "rules.yaml",
                                                                          "people.yaml")}
PROBLEM = re.compile(r"(?P<file>[^\n]+?):(?P<line>[0-9]+): (?P<message>.*)", re.DOTALL)

# Values chosen to hit parsers' edges: durations, addresses, networks, times, zones, names.
EDGY = [
    "30m", "0s", "-5m", "7d", "1e309", "12hours", "15", "",
    "127.0.0.1", "::1", "::ffff:10.0.0.1", "0.0.0.0/0", "10.0.0.0/33", "10.0.0.1/8", "1.2.3.4-1.2.3.1",
    "1.2.3.4 - 1.2.3.9", "2001:db8::/129", "fe80::1%eth0", "not-an-ip", "*", "!GB", "GB", "gb", "!!", "ZZZ",
    "mon-fri", "sun-mon", "mon-funday", "07:00", "25:00", "7", "24:00", "00:00",
    "Europe/London", "Not/AZone", "../../etc", "UTC", "2026-02-30", "2026-12-31", "1999-01-01",
    "enforce", "report-only", "block", "allow", "mobile", "web", "x-forwarded-for", "forwarded",
    "cookie", "redis", "redis://127.0.0.1:1/0", "http://127.0.0.1:1", "ftp://x", "http://", "json", "text",
    "^AcmeCRM-Mobile/", "([unclosed", "(a+)+$", "/billing/**", "/**/export", "billing", "/**/**", "***", "/a/*b",
    "jim", "alice", "nobody", "warehouse", "clock-in", "export", "GET", "post", "FETCH ME", "\x85", "\u2028",
]
SAFE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/~\\\x00"),
                    max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EDGY),
    SAFE_TEXT,
    st.dates(),
)


def _all_keys(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            out.add(str(key))
            _all_keys(value, out)
    elif isinstance(node, list):
        for item in node:
            _all_keys(item, out)
    return out


KNOWN_KEYS = sorted(_all_keys(EXAMPLES, set()) | {"id", "priority", "report_only", "countries", "users",
                                                   "networks", "channel", "reason", "export_like", "tls",
                                                   "cert", "key", "geoip", "database", "find_time", "ban_time"})
keys = st.one_of(st.sampled_from(KNOWN_KEYS), SAFE_TEXT)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=4)),
    max_leaves=8,
)

# YAML that yaml.safe_dump never writes but an admin may: spliced in place of a value.
RAW_YAML = [
    "!!set {a, b}", "!!binary aGVsbG8=", "!!timestamp 2001-12-14t21:59:43.10-05:00", "!!float .nan", "!!float -.inf",
    "!!int 0x1F", "!!omap [a: 1, b: 2]", "!!pairs [a: 1, a: 2]", "!!str", "!!null ''", "!!bool yes",
    "&anchor [1, 2]", "*undefined_alias", "{<<: {a: 1}, b: 2}", "{<<: [1]}", "!!python/object:os.system x",
    "!custom_tag x", "[[[[[[]]]]]]", "{? [a, b]: c}", "{[1, 2]: x}", "{null: x}", "{1: x, '1': y}",
    "'unterminated", "\"\\x\"", "|\n  block", ">-", "~", "0o17", "1_000", "12:30:00", "2026-12-31 23:59:59",
    "yes", "off", "=", "<<", "? x", "- a", "{a: 1, a: 1}", "@reserved", "`reserved",
]
# Raw control characters included: PyYAML's reader refuses them, and that too must be a file:line error.
CORRUPTIONS = [":", "-", " ", "\t", "\n", "[", "]", "{", "}", "'", '"', "#", "&", "*", "!", "%", "|", ">", ",",
               "?", "\r", "\ufeff", "\u00e9", "\U0001f600", "\x00", "\x07", "\x1b"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indices) to a node of the document, the root included."""
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            found.extend(_paths(item, (*prefix, index)))
    return found


@st.composite
def mutated(draw: st.DrawFn, example: Any) -> tuple[str, list[str]]:
    """A mutated copy of ``example`` dumped to YAML text; and the raw fragments spliced in."""
    document = copy.deepcopy(example)
    raws: list[str] = []
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        parent: Any = document
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "add", "raw"]))
        if not path:
            if action in ("replace", "raw"):
                document = draw(values) if action == "replace" else _raw_marker(draw, raws)
            continue
        last = path[-1]
        if action == "replace":
            parent[last] = draw(values)
        elif action == "raw":
            parent[last] = _raw_marker(draw, raws)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(keys)] = draw(values)
        elif isinstance(parent[last], list):
            parent[last].append(draw(values))
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    for index, raw in enumerate(raws):
        text = text.replace(f"'@@RAW{index}@@'", raw).replace(f"@@RAW{index}@@", raw)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        if text and draw(st.booleans()):
            at = draw(st.integers(min_value=0, max_value=len(text)))
            cut = draw(st.integers(min_value=0, max_value=3))
            text = text[:at] + draw(st.sampled_from(CORRUPTIONS)) + text[at + cut :]
    return text, raws


def _raw_marker(draw: st.DrawFn, raws: list[str]) -> str:
    raws.append(draw(st.sampled_from(RAW_YAML)))
    return f"@@RAW{len(raws) - 1}@@"


def check_problems(error: ConfigError, files: set[str]) -> None:
    assert error.problems, "a ConfigError with no problem in it"
    for problem in error.problems:
        text = str(problem)
        found = PROBLEM.fullmatch(text)
        assert found, f"not 'file:line: message': {text!r}"
        assert found["file"] in files, f"names a file it was not given: {text!r}"
        assert int(found["line"]) >= 1, text
        assert found["message"].strip(), text
        assert "\n" not in text, f"a problem must fit one line of `check` output: {text!r}"


def load(folder: Path, main: str, rules: str, people: str) -> set[str]:
    """Write the three files; return the file names a problem may name."""
    paths = {name: folder / name for name in ("gateway.yaml", "rules.yaml", "people.yaml")}
    for name, text in (("gateway.yaml", main), ("rules.yaml", rules), ("people.yaml", people)):
        paths[name].write_bytes(text.encode("utf-8", "surrogatepass"))
    return {str(path) for path in paths.values()}


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(main=mutated(EXAMPLES["gateway.yaml"]), rules=mutated(EXAMPLES["rules.yaml"]),
       people=mutated(EXAMPLES["people.yaml"]))
def test_load_config_answers_only_config_errors_naming_file_and_line(
    main: tuple[str, list[str]], rules: tuple[str, list[str]], people: tuple[str, list[str]]
) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        files = load(folder, main[0], rules[0], people[0])
        # Policy files a mutated main file names elsewhere may be named too (as missing).
        try:
            load_config(folder / "gateway.yaml")
        except ConfigError as error:
            named = files | {p.split(":", 1)[0] for p in map(str, error.problems)
                             if p.startswith(str(folder) + "/") and p.split(":", 1)[0] not in files}
            check_problems(error, named)


@FUZZ
@given(document=values)
def test_any_yaml_document_as_the_main_file(document: Any) -> None:
    """Not even the shape of the example: any mapping, list or scalar at the top."""
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "gateway.yaml"
        path.write_text(yaml.safe_dump(document, allow_unicode=True))
        try:
            load_config(path)
        except ConfigError as error:
            check_problems(error, {str(path)})


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_any_text_as_a_policy_file(text: str) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "gateway.yaml").write_text("upstream: {url: 'http://127.0.0.1:1'}\npolicy_files: [rules.yaml]\n")
        (folder / "rules.yaml").write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_config(folder / "gateway.yaml")
        except ConfigError as error:
            check_problems(error, {str(folder / "rules.yaml"), str(folder / "gateway.yaml")})


def test_the_unmutated_examples_load() -> None:
    """Control: the fuzzer starts from files that are valid, so every problem it finds is one it made."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        dump = {k: yaml.safe_dump(v, sort_keys=False) for k, v in EXAMPLES.items()}
        load(folder, dump["gateway.yaml"], dump["rules.yaml"], dump["people.yaml"])
        config = load_config(folder / "gateway.yaml")
        assert config.policy is not None
