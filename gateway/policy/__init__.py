"""The policy engine (DESIGN.md §2 policy files, §3 decisions).

Interface used by the rest of the gateway (implemented by the modules of this package):

- ``load_policy(settings, problems) -> Policy``
- ``Policy.decide(facts: RequestFacts, *, explain: bool = False) -> Decision``
"""
