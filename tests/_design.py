"""The design's 11-model catalog (`examples/policies/models.yaml`), for tests whose expected
figures were worked out by hand from it: its prices and latency priors do not move when
the packaged catalog (generated from LiteLLM's table) is refreshed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine import PolicyEngine

DESIGN_CATALOG = Path(__file__).resolve().parent.parent / "examples" / "policies" / "models.yaml"
CATALOG_LINE = f"catalog {json.dumps(DESIGN_CATALOG.as_posix())}\n"


def on_design(text: str) -> str:
    """Policy text on the design catalog (unless it names a catalog of its own)."""
    return text if 'catalog "' in text else CATALOG_LINE + text


def from_design(text: str, *args: Any, **kwargs: Any) -> PolicyEngine:
    """`PolicyEngine.from_text` on the design catalog."""
    return PolicyEngine.from_text(on_design(text), *args, **kwargs)


def design_engine(**kwargs: Any) -> PolicyEngine:
    """The design's default policy set (the packaged one before today's catalog), as an
    engine: `examples/policies/design.policy` on the design catalog."""
    return PolicyEngine(DESIGN_CATALOG.parent / "design.policy", **kwargs)


Factory = Callable[..., PolicyEngine]
