"""An edit of a big policy file read as an edit (gateway.policy.layout, sources.read_edit, engine.patch_index).

The promise: whatever the edit, the reload's result is exactly what reading the
edited file whole gives (same source, same rules, same index, same decisions),
or the file is read whole. These tests compare against that, and check that
the usual edits (one rule changed, appended, inserted, removed) do take the
fast way.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import pickle
import random
import shutil
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import load_config
from gateway.policy import Policy, RequestFacts, sources
from gateway.policy.engine import _NO_NETS, Tier, _Bucket, build_index, patch_index
from gateway.policy.networks import PrefixTable
from gateway.policy.rules import FILE_SHIFT, ORDER_GAP, Rule, _numbered, compile_rules
from gateway.policy.sources import PolicySource, read_edit, read_source
from gateway.policy.spec import PolicySpec
from gateway.yamlsrc import ConfigError
from tests.policy.world import COUNTRIES, FIXTURES, MONDAY, write_country_db

HEAD = "functions:\n  gen-fn: {paths: ['/gen/**']}\ngroups:\n  gen-group: [gen-user]\n"
# the other sections after an edit: as many lines, more, fewer, a function gone, a problem
HEADS = [
    HEAD,
    "functions:\n  gen-fn: {paths: ['/gen/**', '/g/**']}\ngroups:\n  gen-group: [gen-user, jim]\n",
    "functions:\n  gen-fn:\n    paths: ['/gen/**']\n  other-fn: {paths: ['/o/**']}\n\n"
    "groups:\n  gen-group: [gen-user]\n",
    "functions: {gen-fn: {paths: ['/gen/**']}}\ngroups: {gen-group: [gen-user]}\n",
    "functions:\n  other-fn: {paths: ['/o/**']}\ngroups:\n  gen-group: [gen-user]\n",
    "functions:\n  gen-fn: {paths: 7}\ngroups:\n  gen-group: [gen-user]\n",
]
FUNCTIONS = ["gen-fn", "export", "billing"]


def _rule(rnd: random.Random, index: int, *, with_id: bool = True) -> dict[str, Any]:
    """A rule in one of the shapes big generated files have; every name it uses exists in the fixture policy."""
    rule: dict[str, Any] = {"id": f"r-{index}-{rnd.randrange(10**6)}"} if with_id else {}
    kind = rnd.randrange(7)
    if kind == 0:
        rule.update(action="block", networks=[f"10.{rnd.randrange(4)}.{rnd.randrange(4)}.{rnd.randrange(4)}"])
    elif kind == 1:
        rule.update(action="allow", networks=[f"172.16.{rnd.randrange(4)}.0/24", "2001:db8::/48"],
                    groups=[rnd.choice(["gen-group", "warehouse"])])  # fmt: skip
    elif kind == 2:
        rule.update(action="block", function=rnd.choice(FUNCTIONS), users=[rnd.choice(["jim", "gen-user", "alice"])])
    elif kind == 3:
        rule.update(action="block", countries=[rnd.choice(["DE", "FR", "!GB"])], priority=rnd.choice([0, 5]))
    elif kind == 4:
        title = rnd.choice(["A title: with 'quotes' and # hash", "Two lines\nof title\n\n\n", "One line\n"])
        rule.update(action="allow", function=rnd.choice(FUNCTIONS), title=title)
    elif kind == 5:
        rule.update(action="block", networks=["10.0.0.5-10.0.0.9"], expires="2099-12-31", reason="incident")
    else:
        rule.update(action="block", channel="mobile", report_only=True)
    return rule


class _BlockScalars(yaml.SafeDumper):
    """Writes strings of several lines as block scalars: ``|+`` keeps the blank lines after the text."""


_BlockScalars.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _text(rules: list[dict[str, Any]], style: int, head: str = HEAD) -> str:
    """The file: the head, then the rules in one of a few writing styles (indent, flow lists, comments,
    block scalars); or the rules between the head's sections, or before them all (``yaml.safe_dump``'s
    sorted keys)."""
    if style == 0:
        return head + yaml.safe_dump({"rules": rules}, sort_keys=False)
    if style == 5:  # a `|+` scalar last ends the document with `...`, which the cut refuses: a comment instead
        text = head + yaml.dump({"rules": rules}, Dumper=_BlockScalars, sort_keys=False)
        return text.removesuffix("...\n") + "# the end\n" if text.endswith("\n...\n") else text
    if style == 3:
        before, key, after = head.partition("\ngroups:")
        return before + "\n" + yaml.safe_dump({"rules": rules}, sort_keys=False) + key[1:] + after
    if style == 4:
        return yaml.safe_dump({"rules": rules}, sort_keys=False) + head
    if style == 1:  # items indented under the key, flow-style values
        body = yaml.safe_dump(rules, sort_keys=False, default_flow_style=None)
        return head + "rules:\n" + "".join(f"  {line}\n" for line in body.splitlines())
    out = [head, "rules:  # generated\n"]  # comments and blank lines between the items
    for number, rule in enumerate(rules):
        out.append(f"# rule {number}\n\n" if number % 3 == 0 else "")
        out.append(yaml.safe_dump([rule], sort_keys=False))
    return "".join(out)


def _as_whole_read(edited: PolicySource | None, whole: PolicySource) -> bool:
    """Whether the edit read is the whole read: the same source, or (for an edit with problems, read
    as an edit) the same problems and everything the checks across files use, and no rules."""
    if edited is None or not whole.problems:
        return edited == whole
    return (
        edited.problems == whole.problems and not edited.rules and edited.layout is None
        and [edited.names(kind) for kind in ("rule id", *sources._NAME_KINDS)]
        == [whole.names(kind) for kind in ("rule id", *sources._NAME_KINDS)]
        and list(edited.refs()) == list(whole.refs())
        and (edited.group_members, edited.mobile_refs) == (whole.group_members, whole.mobile_refs)
    )


def _source(path: Path, text: str) -> PolicySource:
    return read_source(path, text.encode(), geoip=True, cut=True)


def _edited(path: Path, old: PolicySource, text: str, *, children: int = 0) -> PolicySource | None:
    """``text`` read as an edit of ``old``; with ``children``, by that many child processes started first
    (as read_sources does for a big file), otherwise by one started when needed."""
    data = text.encode()
    started = [sources._Child() for _ in range(children)]
    try:
        return read_edit(path, data, hashlib.sha256(data).digest(), old, children=started)
    finally:
        for child in started:
            child.close()


@st.composite
def _edits(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, str]:
    rnd = random.Random(draw(st.integers(0, 2**32)))
    with_ids = draw(st.booleans())
    before = [_rule(rnd, index, with_id=with_ids or rnd.random() < 0.5) for index in range(draw(st.integers(1, 30)))]
    after = list(before)
    for _ in range(draw(st.integers(0, 4))):
        where = rnd.randrange(len(after) + 1)
        edit = draw(st.sampled_from(["insert", "delete", "change", "append", "duplicate id", "bad", "move", "swap"]))
        if edit in ("move", "swap") and len(after) > 1:  # rules found again elsewhere (named by place or not)
            a, b = sorted(rnd.sample(range(len(after)), 2))
            if edit == "swap":
                after[a], after[b] = after[b], after[a]
            else:
                block = after[a:a + rnd.randint(1, 3)]
                del after[a:a + len(block)]
                at = rnd.randrange(len(after) + 1)
                after[at:at] = block
        elif edit == "insert":
            after.insert(where, _rule(rnd, 1000 + where))
        elif edit == "delete" and len(after) > 1:
            del after[min(where, len(after) - 1)]
        elif edit == "change":
            after[min(where, len(after) - 1)] = _rule(rnd, 2000 + where, with_id=with_ids)
        elif edit == "append":
            after.append(_rule(rnd, 3000 + where))
        elif edit == "duplicate id" and "id" in after[0]:
            after.append({**_rule(rnd, 4000), "id": after[0]["id"]})
        elif edit == "bad":  # a problem in the item itself, or in what it refers to (found across files)
            after.insert(where, rnd.choice([
                {"id": "bad", "action": "maybe"}, {"action": "block", "networks": ["10.0.0.300"]},
                {"id": "bad-fn", "action": "block", "function": "no-such-fn", "countries": ["GBR"]},
                {"id": "bad-group", "action": "allow", "groups": ["no-such-group"]}, {"title": "no action"},
            ]))
    return before, after, draw(st.integers(0, 5)), draw(st.sampled_from(HEADS))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_edits())
def test_an_edit_read_as_an_edit_is_the_file_read_whole(tmp_path: Path, case: tuple[Any, Any, int, str]) -> None:
    before, after, style, head = case
    path = tmp_path / "big.yaml"
    old = _source(path, _text(before, style))
    assert old.layout is not None and not old.problems
    new_text = _text(after, style, head)
    whole = _source(path, new_text)
    edited = _edited(path, old, new_text)
    if edited is None:  # read whole instead: only for an edit with problems
        assert whole.problems, "a clean edit must be read as an edit"
    else:
        assert _as_whole_read(edited, whole)


def test_the_usual_edits_reuse_the_unchanged_rules(tmp_path: Path) -> None:
    rnd = random.Random(7)
    rules = [_rule(rnd, index) for index in range(200)]
    path = tmp_path / "big.yaml"
    old = _source(path, _text(rules, 0))
    changed = [*rules[:50], {**rules[50], "title": "Changed in place"}, *rules[51:]]
    inserted = [*rules[:50], _rule(rnd, 999), *rules[50:]]
    cases = {
        "one rule changed in place": (changed, 199),
        "one rule appended": ([*rules, _rule(rnd, 999)], 200),
        "one rule inserted": (inserted, 200),  # the 150 after it moved a line down: only their lines change
        "one rule removed": ([*rules[:50], *rules[51:]], 199),
        # the rules between two edits far apart are found unchanged: not read again
        "two rules changed far apart": ([*changed[:190], {**rules[190], "title": "Changed far"}, *rules[191:]], 198),
        "a block of rules moved up": ([*rules[:10], *rules[150:160], *rules[10:150], *rules[160:]], 200),
        "two rules swapped": ([*rules[:20], rules[180], *rules[21:180], rules[20], *rules[181:]], 200),
    }
    for name, (after, same_objects) in cases.items():
        edited = _edited(path, old, _text(after, 0))
        assert edited is not None, name
        assert edited == _source(path, _text(after, 0)), name
        assert sum(a is b for a in edited.rules for b in old.rules) == same_objects, name


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a tab", HEAD + "rules:\n- id: a\n  action: block\n\t\n"),
        ("a line separator", HEAD + "rules:\n- id: a\n  action: block\n  title: \u2028x\n"),
        ("a document marker after the rules", HEAD + "rules:\n- id: a\n  action: block\n---\n"),
        ("an item at a column left of the list's", HEAD + "rules:\n  - id: a\n    action: block\n - id: b\n"),
        ("a second document", HEAD + "rules:\n- id: a\n  action: block\n---\nrules: []\n"),
        ("rules written as a flow list", HEAD + "rules: [{id: a, action: block}]\n"),
        ("an anchor and an alias", HEAD + "rules:\n- id: a\n  action: block\n  networks: &n [10.0.0.1]\n"
                                          "- id: b\n  action: block\n  networks: *n\n"),
        ("an item's mapping on the next line", HEAD + "rules:\n-\n  id: a\n  action: block\n"),
        ("a problem in the file", HEAD + "rules:\n- id: a\n  action: maybe\n"),
    ],
)
def test_a_file_the_cut_could_misread_keeps_no_layout(tmp_path: Path, name: str, text: str) -> None:
    assert _source(tmp_path / "big.yaml", text).layout is None, name


def test_an_edit_into_an_alias_or_what_the_cut_cannot_trust_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    text = HEAD + "rules:\n- id: a\n  action: block\n  networks: [10.0.0.1]\n- id: b\n  action: block\n"
    old = _source(path, text)
    assert old.layout is not None
    assert _edited(path, old, text.replace("[10.0.0.1]", "&n [10.0.0.1]") + "  networks: *n\n") is None
    assert _edited(path, old, text.replace("gen-fn: {", "gen-fn: &f {") + "other: *f\n") is None
    assert _edited(path, old, text + "- id: c\n  action: block\n\t\n") is None  # a tab
    assert _edited(path, old, text + "groups2: {}\n") is None  # a section after the rules
    assert _edited(path, old, text + '- id: c\n  title: "open\n- id: d\n  action: block\n') is None


def test_new_rules_far_apart_keep_their_block_scalars(tmp_path: Path) -> None:
    """New rules far apart are parsed together, the lines between them left out: a `|+` title written
    just before the gap keeps its blank lines, no more (the lines left out are comments, not blank)."""
    rnd = random.Random(9)
    rules = [_rule(rnd, index) for index in range(12)]
    path = tmp_path / "big.yaml"
    old = _source(path, _text(rules, 5))
    kept = {"id": "kept", "action": "allow", "function": "export", "title": "Kept lines\n\n\n"}
    after = [*rules[:3], kept, *rules[4:9], {**rules[9], "id": "far"}, *rules[10:]]
    text = _text(after, 5)
    assert "title: |+\n    Kept lines\n\n\n- " in text
    edited = _edited(path, old, text)
    assert edited is not None
    assert edited == _source(path, text)
    assert edited.rules[3].title == "Kept lines\n\n\n"
    assert sum(a is b for a in edited.rules for b in old.rules) == 10, "the rules between the two were not read"


def test_many_new_rules_are_read_in_a_child_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More than EDIT_ITEMS new rules: read in a child, as a big file read whole is; the others still reused."""
    rnd = random.Random(3)
    rules = [_rule(rnd, index) for index in range(20)]
    path = tmp_path / "big.yaml"
    old = _source(path, _text(rules, 0))
    after = [_rule(rnd, 96), *rules[1:19], _rule(rnd, 95), _rule(rnd, 94)]  # three new rules, at both ends
    monkeypatch.setattr(sources, "EDIT_ITEMS", 2)

    def not_here(*args: object) -> None:
        raise AssertionError("read in this process")

    monkeypatch.setattr(sources, "_read_runs", not_here)
    edited = _edited(path, old, _text(after, 0))
    assert edited == _source(path, _text(after, 0))
    assert edited is not None
    assert all(a is b for a, b in zip(edited.rules[1:19], old.rules[1:19], strict=True)), "the others reused"
    with pytest.raises(AssertionError, match="read in this process"):  # two new rules: read here
        _edited(path, old, _text([*rules, _rule(rnd, 93), _rule(rnd, 92)], 0))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_edits())
def test_new_rules_read_in_a_child_are_the_file_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: tuple[Any, Any, int, str]
) -> None:
    """Read by two children side by side, each given half of the new items (as read_sources does)."""
    before, after, style, head = case
    monkeypatch.setattr(sources, "EDIT_ITEMS", 0)
    read_here = sources._read_runs
    read_here_items: list[int] = []  # new items read in this process
    monkeypatch.setattr(sources, "_read_runs", lambda text, first_line, lines, *rest: read_here_items.append(
        len(lines)) or read_here(text, first_line, lines, *rest))
    path = tmp_path / "big.yaml"
    old = _source(path, _text(before, style))
    new_text = _text(after, style, head)
    whole = _source(path, new_text)
    edited = _edited(path, old, new_text, children=2)
    assert edited is not None or whole.problems, "a clean edit must be read as an edit"
    if edited is not None:
        assert _as_whole_read(edited, whole)
        assert not any(read_here_items), "new rules read in the child, not here"


def _not_here(*args: object) -> None:
    raise AssertionError("read in this process")


@given(runs=st.lists(st.integers(1, 9), max_size=8).map(
    lambda sizes: [(sum(sizes[:i]) + 2 * i, sum(sizes[:i + 1]) + 2 * i) for i in range(len(sizes))]),
    count=st.integers(1, 4))
def test_the_runs_are_shared_out_in_order_and_evenly(runs: list[tuple[int, int]], count: int) -> None:
    shares = sources._shares(runs, count)
    assert len(shares) == count
    items = [i for share in shares for a, b in share for i in range(a, b)]
    assert items == [i for a, b in runs for i in range(a, b)]
    sizes = [sum(b - a for a, b in share) for share in shares]
    assert max(sizes) - min(sizes) <= 1


def test_problems_in_both_children_s_shares_come_in_the_file_s_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "EDIT_ITEMS", 0)
    monkeypatch.setattr(sources, "_read_runs", _not_here)
    rnd = random.Random(11)
    rules = [_rule(rnd, index) for index in range(40)]
    path = tmp_path / "big.yaml"
    old = _source(path, _text(rules, 0))
    after = [_rule(rnd, 100 + index) for index in range(40)]  # all new: half for each child
    after[3] = {**after[3], "action": "blok"}
    after[30] = {**after[30], "networks": ["10.0.0.256"]}
    after[31] = {"title": "no id and no action"}
    new_text = _text(after, 0)
    edited = _edited(path, old, new_text, children=2)
    whole = _source(path, new_text)
    assert "'blok'" in str(whole.problems[0]) and "'action' is required" in str(whole.problems[-1])
    assert _as_whole_read(edited, whole)


def test_an_id_defined_in_both_children_s_shares_is_left_to_the_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each child sees one of the two: neither reports it. The whole read names both places."""
    monkeypatch.setattr(sources, "EDIT_ITEMS", 0)
    rnd = random.Random(12)
    rules = [_rule(rnd, index) for index in range(40)]
    path = tmp_path / "big.yaml"
    old = _source(path, _text(rules, 0))
    after = [_rule(rnd, 100 + index) for index in range(40)]
    after[35] = {**after[35], "id": after[2]["id"]}
    new_text = _text(after, 0)
    assert "defined twice" in str(_source(path, new_text).problems)
    monkeypatch.setattr(sources, "_read_runs", _not_here)
    assert _edited(path, old, new_text, children=2) is None
    # one child sees both and reports it, as the whole read does
    assert _as_whole_read(_edited(path, old, new_text), _source(path, new_text))


def _big_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, seed: int,
              edit_items: int) -> tuple[random.Random, list[dict[str, Any]], Path, PolicySource]:
    """40 rules in a file read as a big one is (in a child), edits of more than ``edit_items`` read in children."""
    rnd = random.Random(seed)
    rules = [_rule(rnd, index) for index in range(40)]
    path = tmp_path / "big.yaml"
    path.write_text(_text(rules, 0))
    monkeypatch.setattr(sources, "ISOLATE_BYTES", 0)
    monkeypatch.setattr(sources, "EDIT_ITEMS", edit_items)
    [old] = sources.read_sources([path], geoip=True)
    return rnd, rules, path, old


def _children_started(monkeypatch: pytest.MonkeyPatch) -> list[sources._Child]:
    """The child processes the reads start from now on, in order (they run as they would)."""
    started: list[sources._Child] = []
    child_class = sources._Child

    def start() -> sources._Child:
        started.append(child_class())
        return started[-1]

    monkeypatch.setattr(sources, "_Child", start)
    return started


@pytest.mark.parametrize("new_rules", [1, 30], ids=["a small edit", "a large edit"])
def test_the_children_started_for_a_big_file_are_all_gone_after_the_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_rules: int
) -> None:
    """Started before the cut, used or not (a small edit is read here): none is left running, and none
    is started besides them."""
    rnd, rules, path, old = _big_file(tmp_path, monkeypatch, seed=13, edit_items=10)
    started = _children_started(monkeypatch)
    path.write_text(_text([*(_rule(rnd, 100 + index) for index in range(new_rules)), *rules[new_rules:]], 0))
    [edited] = sources.read_sources([path], geoip=True, previous=[old])
    assert edited == _source(path, path.read_text())
    assert len(started) == sources.CHILDREN
    assert [child.used for child in started] == [new_rules > 10] * sources.CHILDREN
    assert all(child.process.returncode is not None for child in started)


def test_a_rule_without_id_is_read_again_where_it_moved(tmp_path: Path) -> None:
    """Its id is its place (``big.rules[3]``): found at another place, its old spec would have the old name."""
    rnd = random.Random(5)
    rules = [_rule(rnd, index, with_id=index % 2 == 0) for index in range(12)]
    path = tmp_path / "big.yaml"
    old = _source(path, _text(rules, 0))
    after = [rules[5], *rules[:5], *rules[6:]]  # an id-less rule to the top: it and those it pushed down are renamed
    edited = _edited(path, old, _text(after, 0))
    assert edited == _source(path, _text(after, 0))
    assert edited is not None and edited.rules[0].id == "big.rules[0]"
    assert [a is b for a, b in zip(edited.rules[6:], old.rules[6:], strict=True)] == [True] * 6, "the rest reused"


# -- the index ---------------------------------------------------------------------------------------


def _canonical(tiers: dict[int, Tier]) -> object:
    """Everything a decision reads of an index, rules by id and in their order (bare or in a tuple)."""

    def hits(value: object) -> object:
        return tuple(r.id for r in value) if isinstance(value, tuple) else value.id  # type: ignore[attr-defined]

    def table(nets: PrefixTable[Rule]) -> object:
        return [
            [(prefix, mask, sorted((k, hits(v)) for k, v in level.items())) for prefix, mask, level in version]
            for version in (nets.v4, nets.v6)
        ]

    def bucket(b: _Bucket) -> object:
        assert (b.plain_hits is None) == (not b.plain)
        return (
            b.nets is _NO_NETS, table(b.nets),
            sorted((code, hits(tuple(rules))) for code, rules in b.by_country.items()), hits(tuple(b.plain)),
        )  # fmt: skip

    return {
        priority: {f: {s: bucket(b) for s, b in by_subject.items()} for f, by_subject in tier.items()}
        for priority, tier in tiers.items()
    }


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(0, 40), removed=st.integers(0, 12), added=st.integers(0, 12))
def test_a_patched_index_is_the_index_built_anew(seed: int, count: int, removed: int, added: int) -> None:
    rnd = random.Random(seed)
    spec = read_source(Path("gen.yaml"), yaml.safe_dump(
        {"rules": [_rule(rnd, index) for index in range(count + added)]}
    ).encode(), geoip=True)  # fmt: skip
    rules, _ = compile_rules(PolicySpec(rules=spec.rules, rule_lines=spec.rule_lines))  # unique orders, as in a policy
    new = rnd.sample(rules, added)  # anywhere in the order: an edit's rules rank among the others
    before = [rule for rule in rules if rule not in new]
    gone = rnd.sample(before, min(removed, len(before)))
    after = [rule for rule in rules if rule not in gone]
    tiers = build_index(before)
    was = _canonical(tiers)
    patched = patch_index(tiers, gone, new)
    assert _canonical(patched) == _canonical(build_index(after))
    assert _canonical(tiers) == was, "the old index is not changed"


# -- through load_config: the reload of a running policy ---------------------------------------------


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for item in FIXTURES.iterdir():
        shutil.copy(item, tmp_path / item.name)
    write_country_db(tmp_path / "country.mmdb", COUNTRIES)
    main = tmp_path / "gateway.yaml"
    main.write_text(main.read_text().replace("[rules.yaml, people.yaml]", "[rules.yaml, people.yaml, big.yaml]"))
    monkeypatch.setattr(sources, "ISOLATE_BYTES", 1000)  # big.yaml is read as the 12 MB files are
    return tmp_path


def fresh_lines(policy: Policy, path: Path) -> array[int]:
    return array("I", [policy.where_of(rule).line for rule in policy.rules if rule.spec.file == str(path)])


def _decisions_agree(a: Any, b: Any) -> None:
    for user in (None, "jim", "alice", "gen-user", "pat"):
        for ip in ("10.0.1.2", "10.0.0.7", "172.16.2.9", "2001:db8::1", "81.2.69.142", "193.167.1.70"):
            for method, path in (("GET", "/"), ("GET", "/gen/x"), ("GET", "/billing/x"), ("GET", "/reports/1/csv")):
                for agent in ("Mozilla/5.0", "AcmeCRM-Mobile/4.2"):
                    facts = RequestFacts(ipaddress.ip_address(ip), method, path, agent, user, MONDAY)
                    assert a.decide(facts, explain=True) == b.decide(facts, explain=True), facts


@pytest.mark.parametrize(
    ("name", "edit", "shift", "compiled"),
    [
        ("appended", lambda rules, rnd: [*rules, _rule(rnd, 999)], 0, 1),
        ("changed in place", lambda rules, rnd: [*rules[:40], {**rules[40], "title": "Changed"}, *rules[41:]], 0, 1),
        ("inserted at the top", lambda rules, rnd: [_rule(rnd, 999), *rules], -1, 1),
        ("removed", lambda rules, rnd: rules[1:], 1, 0),
        ("changed at two far places", lambda rules, rnd: [*rules[:5], _rule(rnd, 998), *rules[6:100], _rule(rnd, 999),
                                                          *rules[101:]], 0, 2),
        ("one moved to the top", lambda rules, rnd: [rules[100], *rules[:100], *rules[101:]], -1, 1),
        ("functions section grown by a line", None, 0, 0),
    ],
)
def test_a_reload_after_an_edit_of_the_big_file_decides_as_a_fresh_load(
    folder: Path, name: str, edit: Callable[[list[Any], random.Random], list[Any]] | None, shift: int, compiled: int
) -> None:
    rnd = random.Random(11)
    rules = [_rule(rnd, index) for index in range(120)]
    big = folder / "big.yaml"
    big.write_text(_text(rules, 0))
    first = load_config(folder / "gateway.yaml")
    big.write_text(_text(edit(rules, rnd), 0) if edit else _text(rules, 0, HEADS[2]))
    reloaded = load_config(folder / "gateway.yaml", previous=first).policy
    fresh = load_config(folder / "gateway.yaml").policy
    [old_big] = [s for s in first.policy.sources if s.path == str(big)]
    [new_big] = [s for s in reloaded.sources if s.path == str(big)]
    assert new_big.layout is not None
    assert new_big.rules[60].title is old_big.rules[60 + shift].title, "read as an edit: unchanged rules reused"
    assert new_big.rules[60] is old_big.rules[60 + shift], "moved or not, the same spec (its line is apart)"
    assert new_big.rule_lines == fresh_lines(fresh, big)
    before = {id(rule) for rule in first.policy.rules}
    assert len([r for r in reloaded.rules if r.spec.file == str(big) and id(r) not in before]) == compiled, (
        "only the rules the edit wrote are compiled: the others are reused, in their places"
    )
    assert [(r.id, reloaded.where_of(r)) for r in reloaded.rules] == [(r.id, fresh.where_of(r)) for r in fresh.rules]
    assert _canonical(reloaded._segments[-1].tiers) == _canonical(fresh._segments[-1].tiers)
    _decisions_agree(reloaded, fresh)


def test_rules_inserted_again_and_again_compile_alone_or_with_a_few_neighbours(folder: Path) -> None:
    """At the top, new rules never run out of room; at one place in the middle, each insert halves it.

    Once it is used up, a few neighbours are numbered anew (and compiled) with the new rule, never
    the whole file, and every reload still decides as a fresh load.
    """
    rnd = random.Random(3)
    rules = [_rule(rnd, index) for index in range(40)]
    big = folder / "big.yaml"
    big.write_text(_text(rules, 0))
    running = load_config(folder / "gateway.yaml")
    with_neighbours = []
    for round_ in range(6 + ORDER_GAP.bit_length() + 4):  # 6 at the top, then the others at one place
        at_top = round_ < 6
        place = 0 if at_top else 20
        rules.insert(place, _rule(rnd, 1000 + round_))
        big.write_text(_text(rules, 0))
        before = {id(rule) for rule in running.policy.rules}
        running = load_config(folder / "gateway.yaml", previous=running)
        policy = running.policy
        compiled = [r.id for r in policy.rules if r.spec.file == str(big) and id(r) not in before]
        assert rules[place]["id"] in compiled
        if len(compiled) > 1:
            assert not at_top, "no room is used up at the top"
            with_neighbours.append(len(compiled))
        orders = [rule.order for rule in policy.rules]
        assert orders == sorted(set(orders)), "the rules are in the files' order (where_of depends on it)"
        if round_ in (0, 6) or len(compiled) > 1:  # against a fresh load: the first of each kind, and the renumbering
            fresh = load_config(folder / "gateway.yaml").policy
            assert [(r.id, policy.where_of(r)) for r in policy.rules] == [
                (r.id, fresh.where_of(r)) for r in fresh.rules
            ]
            _decisions_agree(policy, fresh)
    assert len(with_neighbours) == 1 and with_neighbours[0] < len(rules) // 2, with_neighbours
    fresh = load_config(folder / "gateway.yaml").policy
    assert [(r.id, policy.where_of(r)) for r in policy.rules] == [(r.id, fresh.where_of(r)) for r in fresh.rules]
    _decisions_agree(policy, fresh)


_SPAN = 1 << FILE_SHIFT  # a file's range of orders


@given(
    olds=st.lists(
        st.none() | st.integers(0, 40) | st.integers(0, _SPAN - 1) | st.integers(_SPAN - 40, _SPAN - 1)
        | st.integers(-2 * _SPAN, 3 * _SPAN),  # and orders from other files' ranges (the file moved in the list)
        max_size=30,
    ),
    base=st.sampled_from([_SPAN, 7 * _SPAN]),
)
def test_new_rules_are_numbered_between_the_kept_ones(olds: list[int | None], base: int) -> None:
    given = [None if old is None else base + old for old in olds]
    orders = _numbered(given, base)
    assert len(orders) == len(given)
    assert all(base < order < base + _SPAN for order in orders)
    assert orders == sorted(set(orders)), "increasing"
    kept = [old for old in given if old is not None]
    bounds = [base, *kept, base + _SPAN]  # both bounds of each run of new rules are taken
    runs, count = [], 0
    for old in given:
        if old is None:
            count += 1
        else:
            runs.append(count)
            count = 0
    runs.append(count)
    if all(high - low - 1 >= run for low, high, run in zip(bounds[:-1], bounds[1:], runs, strict=True)):
        # the kept orders increase and every run of new rules has room: nothing else is numbered anew
        assert all(old in (None, order) for old, order in zip(given, orders, strict=True)), "the kept orders are kept"


@given(positions=st.lists(st.none() | st.integers(1, 60), max_size=40))
def test_rules_moved_up_or_down_keep_the_most_orders_that_can_stay(positions: list[int | None]) -> None:
    """Of kept orders out of order (rules moved), a longest increasing run is kept: one rule moved to the
    top renumbers that rule, not every rule it passed."""
    given = [None if at is None else _SPAN + at * ORDER_GAP for at in positions]  # room everywhere
    orders = _numbered(given, _SPAN)
    assert orders == sorted(set(orders))
    olds = [old for old in given if old is not None]
    longest = [1] * len(olds)  # the longest strictly increasing subsequence ending at each, by brute force
    for j in range(len(olds)):
        for i in range(j):
            if olds[i] < olds[j]:
                longest[j] = max(longest[j], longest[i] + 1)
    assert sum(old == order for old, order in zip(given, orders, strict=True)) == max(longest, default=0)


@pytest.mark.parametrize("place", ["top", "end", "anywhere", "one place in the middle"])
def test_a_thousand_inserts_renumber_few_rules(place: str) -> None:
    """Inserted one per reload, at the top or the end never, and at one place a few neighbours now and then."""
    base = 3 << FILE_SHIFT
    orders = _numbered([None] * 1000, base)
    rnd = random.Random(8)
    renumbered = []
    for _ in range(1000):
        at = {"top": 0, "end": len(orders), "anywhere": rnd.randrange(len(orders) + 1)}.get(place, 500)
        olds: list[int | None] = [*orders[:at], None, *orders[at:]]
        orders = _numbered(olds, base)
        assert orders == sorted(set(orders))
        renumbered.append(sum(old not in (None, order) for old, order in zip(olds, orders, strict=True)))
    if place == "one place in the middle":
        assert 0 < max(renumbered) <= 64 and sum(renumbered) <= 500, (max(renumbered), sum(renumbered))
    else:
        assert sum(renumbered) == 0


def test_an_edit_with_a_problem_is_reported_as_a_whole_read_reports_it(folder: Path) -> None:
    rnd = random.Random(5)
    rules = [_rule(rnd, index) for index in range(50)]
    big = folder / "big.yaml"
    big.write_text(_text(rules, 0))
    first = load_config(folder / "gateway.yaml")
    same_id = {"id": rules[3]["id"], "action": "allow", "title": "same id"}  # (no value shared: no alias)
    for broken in ([*rules, {"id": "x", "action": "maybe"}], [*rules, same_id], [*rules, {"action": "maybe"}, same_id]):
        big.write_text(_text(broken, 0))
        with pytest.raises(ConfigError) as edited:
            load_config(folder / "gateway.yaml", previous=first)
        with pytest.raises(ConfigError) as whole:
            load_config(folder / "gateway.yaml")
        assert str(edited.value) == str(whole.value)
        assert f"{big}:" in str(edited.value)


def test_a_typo_in_the_big_file_is_reported_from_the_edit_alone(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The new items' problems are the whole read's when no id is defined twice: no whole read for a typo
    (at 100,000 rules it took 6-8 s and left the serving process ~40 MiB bigger)."""
    rnd = random.Random(6)
    rules = [_rule(rnd, index) for index in range(60)]
    big = folder / "big.yaml"
    big.write_text(_text(rules, 0))
    first = load_config(folder / "gateway.yaml")
    typos = [
        {**rules[10], "action": "blok"},
        {**rules[20], "networks": ["10.0.0.256"], "function": "no-such-fn"},
        {"title": "no id and no action"},
    ]
    big.write_text(_text([*rules[:10], typos[0], *rules[11:20], typos[1], *rules[21:40], typos[2], *rules[40:]], 0))
    with pytest.raises(ConfigError) as whole:
        load_config(folder / "gateway.yaml")

    def not_whole(*args: object, **kwargs: object) -> None:
        raise AssertionError("read whole")

    monkeypatch.setattr(sources, "read_source", not_whole)
    monkeypatch.setattr(sources, "_read_isolated", not_whole)
    with pytest.raises(ConfigError) as edited:
        load_config(folder / "gateway.yaml", previous=first)
    assert [str(p) for p in edited.value.problems] == [str(p) for p in whole.value.problems]
    assert len(edited.value.problems) == 4 and "unknown function" in str(edited.value)


def test_a_file_of_rules_alone_is_cut_too(tmp_path: Path) -> None:
    """`rules:` on the first line (no other section): the key is found there as well."""
    path = tmp_path / "big.yaml"
    text = "rules:\n- id: a\n  action: block\n  networks: [10.0.0.1]\n"
    old = _source(path, text)
    assert old.layout is not None
    edited = _edited(path, old, text + "- id: b\n  action: allow\n")
    assert edited is not None and edited == _source(path, text + "- id: b\n  action: allow\n")
    assert edited.rules[0] is old.rules[0]


def test_a_share_the_children_cannot_read_stops_the_other_child_before_the_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An anchor in the first share: that child gives up, and the file is read whole in another child. The
    child reading the second share would go on parsing beside it for nothing: it is stopped first."""
    rnd, rules, path, old = _big_file(tmp_path, monkeypatch, seed=15, edit_items=10)
    started = _children_started(monkeypatch)
    whole_read = sources._read_isolated
    running: list[sources._Child] = []

    def read_whole(*args: Any, **kwargs: Any) -> PolicySource | None:
        running.extend(child for child in started if child.used and child.process.poll() is None)
        return whole_read(*args, **kwargs)

    monkeypatch.setattr(sources, "_read_isolated", read_whole)
    text = _text([*(_rule(rnd, 100 + index) for index in range(30)), *rules[30:]], 0)
    text = text.replace("\n- id: r-100-", "\n- &first id: r-100-", 1)
    path.write_text(text)
    [edited] = sources.read_sources([path], geoip=True, previous=[old])
    assert edited == _source(path, text)
    assert len(started) == sources.CHILDREN + 1, "the edit went to the children, the whole read to another"
    assert all(child.used for child in started)
    assert running == []
    assert all(child.process.returncode is not None for child in started)


def test_children_whose_answer_cannot_be_read_leave_the_file_to_be_read_another_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rnd, rules, path, old = _big_file(tmp_path, monkeypatch, seed=14, edit_items=0)

    def unreadable(stream: object) -> None:
        raise pickle.UnpicklingError("truncated")

    monkeypatch.setattr(sources, "_load_rules_after", unreadable)
    path.write_text(_text([*(_rule(rnd, 100 + index) for index in range(30)), *rules[30:]], 0))
    [edited] = sources.read_sources([path], geoip=True, previous=[old])
    assert edited == _source(path, path.read_text())


def test_a_child_yields_the_cpu_to_the_serving_process() -> None:
    """Niced before its imports: even a child started for nothing (a small edit) takes CPU from requests last."""
    child = sources._Child()
    try:
        wanted = min(19, os.getpriority(os.PRIO_PROCESS, 0) + sources.CHILD_NICENESS)
        deadline = time.monotonic() + 10
        while os.getpriority(os.PRIO_PROCESS, child.process.pid) != wanted and time.monotonic() < deadline:
            time.sleep(0.005)
        assert os.getpriority(os.PRIO_PROCESS, child.process.pid) == wanted
        assert child.process.poll() is None, "it waits for its work"
    finally:
        child.close()
    assert child.process.returncode is not None


def test_a_big_file_read_for_the_first_time_starts_one_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to cut it against: it is read whole, by one child (a second would only be killed)."""
    path = tmp_path / "big.yaml"
    path.write_text(_text([_rule(random.Random(16), index) for index in range(10)], 0))
    monkeypatch.setattr(sources, "ISOLATE_BYTES", 0)
    started = _children_started(monkeypatch)
    [source] = sources.read_sources([path], geoip=True)
    assert source == _source(path, path.read_text())
    assert [child.used for child in started] == [True]
    assert started[0].process.returncode == 0
