"""`policyctl diff OLD NEW`: the semantic difference of two policy sets, without traffic.

`changes` compares the statements (routes by name, limits by what they limit, rules by
their text or reason, the defaults, the catalog); `examples` looks for a request each
change affects, decided by both sets; `report` prints them. See docs/diff.md.
"""

from __future__ import annotations

from engine.policydiff.changes import Change, Example, PolicySet, structural_changes
from engine.policydiff.examples import with_examples

__all__ = ["Change", "Example", "PolicySet", "diff"]


def diff(old: PolicySet, new: PolicySet, *, examples: bool = True) -> list[Change]:
    """Every change from `old` to `new`, each with a request that shows it when one is
    found (`examples` false: none looked for)."""
    changes = structural_changes(old, new)
    return with_examples(changes, old, new) if examples else changes
