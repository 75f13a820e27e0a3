"""Properties of path normalisation that must hold for any path a client can send."""

from __future__ import annotations

import contextlib
import re
import urllib.parse

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.paths import BadPath, normalise_path

# Paths assembled from the pieces that make normalisation hard, plus arbitrary text.
pieces = st.sampled_from(
    ["/", "//", ".", "..", "/./", "/../", ";", ";x=1", "%", "%2e", "%2E", "%2F", "%2f", "%5C", "%00",
     "%25", "%41", "%7e", "%C0%AE", "%C3%A9", "%E9", "\\", "billing", "BILLING", "export", "a", "é",
     "\x00", "\n", "|", "?", "#", "~", "%3B"]
)
paths = st.one_of(
    st.lists(pieces, max_size=16).map(lambda parts: "/" + "".join(parts)),
    st.text(max_size=40).map(lambda text: "/" + text),
    st.text(max_size=40),
)
flags = st.booleans()


def segments(path: str) -> list[str]:
    return path.split("/")[1:]


@settings(max_examples=1000, deadline=None)
@given(paths, flags)
def test_returns_or_raises_bad_path_only(raw: str, case_insensitive: bool) -> None:
    with contextlib.suppress(BadPath):
        normalise_path(raw, case_insensitive=case_insensitive)


@settings(max_examples=1000, deadline=None)
@given(paths, flags)
def test_idempotent(raw: str, case_insensitive: bool) -> None:
    """Normalising what the gateway forwards changes nothing: one canonical form per route."""
    try:
        first = normalise_path(raw, case_insensitive=case_insensitive)
    except BadPath:
        return
    again = normalise_path(first.forward, case_insensitive=case_insensitive)
    assert again == first


@settings(max_examples=1000, deadline=None)
@given(paths, flags)
def test_no_empty_or_dot_segments(raw: str, case_insensitive: bool) -> None:
    try:
        result = normalise_path(raw, case_insensitive=case_insensitive)
    except BadPath:
        return
    for path in (result.forward, result.match):
        assert path.startswith("/")
        assert "//" not in path
        inner = segments(path)[:-1]  # the last may be empty: a trailing slash
        assert "" not in inner
        for segment in segments(path):
            assert segment.partition(";")[0] not in (".", ".."), path


@settings(max_examples=1000, deadline=None)
@given(paths, flags)
def test_forward_and_match_agree(raw: str, case_insensitive: bool) -> None:
    """``match`` is ``forward`` without ;params and empty segments (and folded): the same route."""
    try:
        result = normalise_path(raw, case_insensitive=case_insensitive)
    except BadPath:
        return
    stripped = re.sub(r";[^/]*", "", result.forward)
    while "//" in stripped:
        stripped = stripped.replace("//", "/")
    assert result.match == (stripped.lower() if case_insensitive else stripped)


@settings(max_examples=1000, deadline=None)
@given(paths)
def test_output_is_safe_ascii_that_decodes_to_valid_utf8(raw: str) -> None:
    """Upstream never receives a backslash, a control character, an encoded slash or broken UTF-8."""
    try:
        result = normalise_path(raw)
    except BadPath:
        return
    assert result.forward.isascii()
    assert re.fullmatch(r"[A-Za-z0-9\-._~!$&'()*+,=:@/;%]*", result.forward)
    assert not re.search(r"%(?![0-9A-F]{2})", result.forward)
    decoded = urllib.parse.unquote_to_bytes(result.forward).decode("utf-8")  # raises if invalid
    assert "\\" not in decoded
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", decoded)
    assert decoded.count("/") == result.forward.count("/")  # no slash hidden in an escape


# RFC 3986 gives sub-delims, ':' and '@' a meaning distinct from their escapes, and ';', '%', '/',
# '\\', '?', '#' are structural: those keep their spelling. Every other character must not matter.
_SPELLING_MATTERS = set("!$&'()*+,;=:@%/\\?#")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=20))
def test_raw_and_percent_encoded_spellings_normalise_alike(name: str) -> None:
    """Unreserved, non-ASCII and stray characters: raw or fully percent-encoded, one route."""
    name = "".join(char for char in name if char not in _SPELLING_MATTERS)
    if name in ("", ".", ".."):
        return
    raw = normalise_path("/a/" + name)
    encoded = normalise_path("/a/" + urllib.parse.quote(name, safe=""))
    assert raw == encoded


# Escapes of escapes: '%25' next to hex digits, as in /%2562illing (a back end that decodes twice sees /billing).
double_pieces = st.sampled_from(["%25", "%", "25", "62", "2F", "2e", "6C", "aa", "5C", "00", "billing", "/", "."])
double_paths = st.one_of(paths, st.lists(double_pieces, max_size=10).map(lambda parts: "/" + "".join(parts)))


@settings(max_examples=1000, deadline=None)
@given(double_paths, flags)
def test_a_back_end_that_decodes_twice_sees_the_same_route(raw: str, case_insensitive: bool) -> None:
    """Decoding what is forwarded once more yields no new escape: nothing was encoded twice (/%2562illing)."""
    try:
        result = normalise_path(raw, case_insensitive=case_insensitive)
    except BadPath:
        return
    once = urllib.parse.unquote(result.forward, errors="surrogateescape")
    assert not re.search(r"%[0-9A-Fa-f]{2}", once), result.forward
