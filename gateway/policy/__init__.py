"""The policy engine (DESIGN.md §2 policy files, §3 decisions, §5 reasons, §6 checks).

A pure, compiled decision core: policy files are read once into a typed spec
(:mod:`.loader`), compiled into rules with specificity keys (:mod:`.rules`) and
an index (:mod:`.engine`); each request is then judged from frozen
:class:`RequestFacts` into a :class:`Decision`. Nothing here imports aiohttp.

Modules: ``model`` (facts, decision, settings), ``spec`` and ``loader`` (YAML ->
spec), ``sources`` (files read one by one, reused on reload) and ``layout`` (an
edit of a big file read as an edit), ``patterns`` (path globs), ``agents``
(User-Agent patterns, RE2), ``networks`` (CIDRs, ranges, prefix tables),
``geoip`` (countries), ``rules`` (compilation, effective settings), ``engine``
(:class:`Policy`, :func:`load_policy`), ``trace`` (explain's rule-by-rule trace),
``checks`` (``check`` warnings, ``overrides`` report), ``explain`` (its output).
"""

from gateway.policy.engine import Policy, load_policy
from gateway.policy.explain import explain_json, format_explain
from gateway.policy.geoip import GeoIP, GeoIPError
from gateway.policy.model import Decision, EffectiveSettings, LoginHours, RequestFacts, TraceEntry
from gateway.policy.spec import canonical_user

__all__ = [
    "Decision",
    "EffectiveSettings",
    "GeoIP",
    "GeoIPError",
    "LoginHours",
    "Policy",
    "RequestFacts",
    "TraceEntry",
    "canonical_user",
    "explain_json",
    "format_explain",
    "load_policy",
]
