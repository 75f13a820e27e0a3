"""Policy files read one by one (gateway.policy.sources): reuse on reload, checks across files, the child."""

from __future__ import annotations

import gc
import hashlib
import io
import ipaddress
import pickle
import shutil
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import load_config
from gateway.policy import Policy, RequestFacts, sources
from gateway.policy.loader import read_policy_files
from gateway.policy.rules import NO_NETWORK, Rule, rank_for_network, rank_network
from gateway.policy.sources import merge_sources, read_source, read_sources
from gateway.yamlsrc import ConfigError, Mapping, Problems, Sequence, _LineLoader, _read_events, _Unusual
from tests.policy.world import COUNTRIES, FIXTURES, MONDAY, write_country_db


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for item in FIXTURES.iterdir():
        shutil.copy(item, tmp_path / item.name)
    write_country_db(tmp_path / "country.mmdb", COUNTRIES)
    return tmp_path


def _policy_files(folder: Path) -> list[Path]:
    return [folder / "rules.yaml", folder / "people.yaml"]


def test_a_reload_reuses_unchanged_files_and_rereads_an_edited_one(folder: Path) -> None:
    first = load_config(folder / "gateway.yaml")
    with (folder / "people.yaml").open("a") as f:
        f.write("  newcomer: {timezone: Europe/Paris}\n")  # people.yaml ends inside `users:`
    second = load_config(folder / "gateway.yaml", previous=first)
    old, new = first.policy.sources, second.policy.sources
    assert [s.path for s in new] == [str(p) for p in _policy_files(folder)]
    assert new[0] is old[0], "rules.yaml did not change: its source is reused, not read again"
    assert new[1] is not old[1] and new[1].digest != old[1].digest
    assert "newcomer" in second.policy.users and "newcomer" not in first.policy.users
    assert second.policy.rule_count == first.policy.rule_count


def test_a_replaced_policy_is_freed_without_the_cyclic_collector(folder: Path) -> None:
    """The server freezes the heap after a reload instead of walking it all: this is why it may."""
    first = load_config(folder / "gateway.yaml")
    gc.collect()
    gc.disable()
    try:
        second = load_config(folder / "gateway.yaml", previous=first)
        assert gc.collect() == 0, "a reload left garbage in reference cycles"
        second.policy.decide(RequestFacts(ipaddress.ip_address("193.167.2.9"), "GET", "/", "", "alice", MONDAY))
        old = weakref.ref(first.policy)
        del first
        assert old() is None, "the old policy is in a reference cycle"
    finally:
        gc.enable()


def test_a_failed_reload_keeps_nothing_half_read(folder: Path) -> None:
    first = load_config(folder / "gateway.yaml")
    (folder / "people.yaml").write_text("users: [not, a, mapping]\n")
    with pytest.raises(ConfigError) as error:
        load_config(folder / "gateway.yaml", previous=first)
    assert any(str(folder / "people.yaml") + ":1:" in line for line in str(error.value).splitlines())


def test_merged_sources_give_the_same_spec_and_problems_as_one_reader(folder: Path) -> None:
    files = _policy_files(folder)
    one_reader = Problems()
    expected = read_policy_files(files, one_reader, geoip=True)
    merged_problems = Problems()
    merged = merge_sources(read_sources(files, geoip=True), merged_problems)
    assert merged == expected
    assert merged_problems.items == one_reader.items == []


@pytest.mark.parametrize(
    ("description", "people_extra"),
    [
        ("a rule naming a group only another file defines is fine", "groups:\n  night-shift: [alice]\n"),
        ("an unknown group is reported where it is used", ""),
        ("a group defined in both files: the old reader reports it exactly", "groups:\n  warehouse: [jim]\n"),
    ],
)
def test_problems_across_files_are_those_of_one_reader(folder: Path, description: str, people_extra: str) -> None:
    (folder / "extra.yaml").write_text(
        "rules:\n  - title: Night shift may export\n    action: allow\n    function: export\n"
        "    groups: [night-shift]\n" + people_extra
    )
    files = [*_policy_files(folder), folder / "extra.yaml"]
    one_reader = Problems()
    read_policy_files(files, one_reader, geoip=True)
    got = Problems()
    if merge_sources(read_sources(files, geoip=True), got) is None:  # a name defined twice: the caller re-reads
        got = Problems()
        read_policy_files(files, got, geoip=True)
    assert [str(p) for p in got.items] == [str(p) for p in one_reader.items], description


def test_a_big_file_read_in_a_child_process_is_the_same_source(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = folder / "rules.yaml"
    data = path.read_bytes()
    here = read_source(path, data, geoip=True, cut=True)
    monkeypatch.setattr(sources, "ISOLATE_BYTES", 0)
    [child] = read_sources([path], geoip=True)
    assert child == here
    assert child is not here
    digest = hashlib.sha256(data).digest()
    assert sources._read_isolated(path, data, geoip=True, digest=digest) == here  # not the fallback


def test_a_file_with_problems_read_in_a_child_comes_back_without_its_rules(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load fails with the problems: the rules would be unpickled in the serving process to be
    dropped (at 100,000 rules, ~+40 MiB that stayed). What the checks across files use comes back."""
    path = folder / "rules.yaml"
    data = path.read_bytes() + b"  - id: typo\n    action: blok\n    function: no-such-fn\n"  # (items at column 2)
    here = read_source(path, data, geoip=True, cut=True)
    assert here.problems and len(here.rules) > 2
    monkeypatch.setattr(sources, "ISOLATE_BYTES", 0)
    child = sources._read_isolated(path, data, geoip=True, digest=here.digest)
    assert child is not None
    assert child.rules == () and len(child.rule_lines) == 0
    assert child == replace(here, rules=(), rule_lines=child.rule_lines, rule_ids=here.names("rule id"))
    ids = here.names("rule id")
    assert child.names("rule id") == ids and "typo" in ids


def test_a_child_that_does_not_answer_in_time_is_killed_and_the_file_read_here(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = folder / "rules.yaml"
    data = path.read_bytes()
    here = read_source(path, data, geoip=True, cut=True)
    monkeypatch.setattr(sources, "CHILD_TIMEOUT", 0.001)  # it is killed before it has started
    killed = sources._in_child("_child", [str(path), "1"], data)
    assert killed is None
    monkeypatch.setattr(sources, "ISOLATE_BYTES", 0)
    assert read_sources([path], geoip=True) == [here]


def test_a_source_pickled_in_chunks_comes_back_whole(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = folder / "rules.yaml"
    here = read_source(path, path.read_bytes(), geoip=True)
    assert len(here.rules) > 2
    monkeypatch.setattr(sources, "PICKLE_CHUNK", 2)
    stream = io.BytesIO()
    sources._dump_chunked(here, stream)
    stream.seek(0)
    back = sources._source_of(sources._load_rules_after(stream))
    assert back == here
    assert stream.read() == b""
    plain = io.BytesIO(pickle.dumps(here))  # not what the child writes
    assert sources._source_of(sources._load_rules_after(plain)) is None


def test_every_kind_of_rule_value_survives_the_chunked_pickle(tmp_path: Path) -> None:
    """Rule specs, locations, network entries (one block, several, IPv6, written text) and expiries
    are pickled field by field (_SharingPickler.reducer_override): each must come back equal."""
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({"rules": [
        {"id": "one-block", "action": "block", "networks": ["10.1.2.3"], "reason": "ban list"},
        {"id": "range", "action": "block", "networks": ["10.0.0.5-10.0.0.77", "192.168.0.0/24"],
         "expires": "2031-01-31"},
        {"id": "v6", "action": "allow", "networks": ["2001:db8::/48"], "expires": "2031-01-31T18:00:00+01:00",
         "users": ["jim"], "report_only": True},
        {"id": "countries", "action": "block", "countries": ["!GB"], "channel": "mobile", "priority": 2},
    ]}, sort_keys=False))
    here = read_source(path, path.read_bytes(), geoip=True)
    assert {type(value).__name__ for rule in here.rules for value in (rule, rule.expires, *(rule.networks or ()))} >= {
        "RuleSpec", "NetEntry", "Expiry"}
    assert any(entry.more for rule in here.rules for entry in rule.networks or ())
    stream = io.BytesIO()
    sources._dump_chunked(here, stream)
    stream.seek(0)
    back = sources._source_of(sources._load_rules_after(stream))
    assert back == here
    assert [rule.networks for rule in back.rules] == [rule.networks for rule in here.rules]


def _loaded_the_long_way(text: str) -> object:
    loader = _LineLoader(text)
    loader.file_name = "f.yaml"
    return loader.get_single_data()


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping)
        return (
            list(a) == list(b) and (a.file, a.line, a.key_lines) == (b.file, b.line, b.key_lines)
            and all(_same(a[k], b[k]) for k in a)
        )  # fmt: skip
    if isinstance(a, Sequence):
        assert isinstance(b, Sequence)
        return (a.line, a.item_lines) == (b.line, b.item_lines) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=12),
    st.sampled_from(["yes", "No", "~", "0x1F", "0o17", "1_000", "2026-12-31", "12:30", ".inf", "1e3", "=", "<<"]),
)  # fmt: skip
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(document=_documents, flow=st.booleans())
def test_the_fast_yaml_reader_builds_what_the_full_loader_builds(document: object, flow: bool) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    try:
        fast = _read_events(text, "f.yaml")
    except _Unusual:  # left to the full loader, by design
        return
    assert _same(fast, _loaded_the_long_way(text))


@pytest.mark.parametrize("name", ["gateway.yaml", "rules.yaml", "people.yaml", "totp-secrets.yaml"])
def test_the_fast_yaml_reader_reads_the_example_files(name: str) -> None:
    text = (FIXTURES / name).read_text()
    assert _same(_read_events(text, "f.yaml"), _loaded_the_long_way(text))


def test_a_rule_is_placed_by_the_policy_it_belongs_to(folder: Path) -> None:
    """`where_of` gives the line each rule is written at, and refuses another policy's rule (even at its order)."""
    policy = load_config(folder / "gateway.yaml").policy
    other = load_config(folder / "gateway.yaml").policy
    placed = 0
    for rule in policy.rules:
        where = policy.where_of(rule)
        text = Path(where.file).read_text().splitlines()[where.line - 1]
        if not rule.id.startswith(("defaults.", "users.")):  # a rules item: its line starts the item
            assert text.lstrip().startswith("- "), (rule.id, text)
            placed += 1
        with pytest.raises(ValueError, match="not this policy's"):
            other.where_of(rule)
    assert placed >= 5


def test_after_a_reload_decisions_are_those_of_a_fresh_load(folder: Path) -> None:
    """Reused rules and indexes (another file changed) decide exactly as a policy loaded from scratch."""
    first = load_config(folder / "gateway.yaml")
    with (folder / "people.yaml").open("a") as f:  # one more override: the overrides' rules renumber
        f.write("  pat:\n    overrides:\n      - ip_lockdown: false\n        reason: On the road\n")
    reloaded = load_config(folder / "gateway.yaml", previous=first).policy
    fresh = load_config(folder / "gateway.yaml").policy
    rules_yaml = str(folder / "rules.yaml")

    def file_rules(policy: Policy) -> list[Rule]:  # the defaults' rules are written there too, but compiled anew
        return [r for r in policy.rules if r.spec.file == rules_yaml and not r.id.startswith("defaults.")]

    assert file_rules(reloaded) and all(
        a is b for a, b in zip(file_rules(reloaded), file_rules(first.policy), strict=True)
    ), "rules.yaml did not change: its compiled rules are reused"
    assert reloaded._segments[1].tiers is first.policy._segments[1].tiers, "and so is its index"
    assert [(r.id, r.order) for r in reloaded.rules] == [(r.id, r.order) for r in fresh.rules]
    for user in (None, "jim", "alice", "pat", "bob", "someone-else"):
        for ip in ("193.167.1.70", "193.167.2.9", "81.2.69.142", "2001:db8:10::1", "8.8.8.8"):
            for method, path in (("GET", "/"), ("POST", "/timeclock/clock-in"), ("GET", "/billing/x"),
                                 ("GET", "/reports/1/csv"), ("GET", "/login")):
                for agent in ("Mozilla/5.0", "AcmeCRM-Mobile/4.2"):
                    facts = RequestFacts(ipaddress.ip_address(ip), method, path, agent, user, MONDAY)
                    assert reloaded.decide(facts, explain=True) == fresh.decide(facts, explain=True), facts


def test_a_rank_packs_the_specificity_key_in_its_order(example: Policy) -> None:
    """Rule.rank sorts as Rule.key, and rank_for_network shifts only the network component."""
    networks = [NO_NETWORK, 0, 48, 104, 120, 128]
    pairs = [(rule.key(n), rule.rank(n)) for rule in example.rules for n in networks]
    assert [rank for _, rank in sorted(pairs)] == sorted(rank for _, rank in pairs)
    for rule in example.rules:
        for n in networks:
            assert rank_for_network(rule.rank(NO_NETWORK), n) == rule.rank(n)
            assert rank_network(rule.rank(n)) == n
