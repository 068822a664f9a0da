"""policyctl: a declarative policy engine for LLM traffic. The public API.

`Request` (the pydantic model) is imported on first use: `import engine` and a
`policyctl eval` of plain requests do not load pydantic."""

from typing import Any

from engine.api.policy_engine import EngineClosedError, PolicyEngine
from engine.build import VERSION
from engine.catalog.model import CatalogError
from engine.diagnostics import Diagnostic, PolicyError
from engine.errors import PolicyctlError
from engine.limits.records import LimitDenial
from engine.routing.decision import (
    Decision,
    DeniedByPolicyRequire,
    DeniedByRule,
    DroppedCandidate,
    NoEligibleModel,
)
from engine.routing.request import RequestError

__version__ = VERSION


def __getattr__(name: str) -> Any:
    if name == "Request":
        from engine.routing.request_model import Request

        return Request
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CatalogError",
    "Decision",
    "DeniedByPolicyRequire",
    "DeniedByRule",
    "Diagnostic",
    "DroppedCandidate",
    "EngineClosedError",
    "LimitDenial",
    "NoEligibleModel",
    "PolicyEngine",
    "PolicyError",
    "PolicyctlError",
    "Request",
    "RequestError",
    "__version__",
]
