"""policyctl: a declarative policy engine for LLM traffic. The public API."""

from engine.api.policy_engine import PolicyEngine
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
from engine.routing.request import Request, RequestError

__version__ = VERSION

__all__ = [
    "CatalogError",
    "Decision",
    "DeniedByPolicyRequire",
    "DeniedByRule",
    "Diagnostic",
    "DroppedCandidate",
    "LimitDenial",
    "NoEligibleModel",
    "PolicyEngine",
    "PolicyError",
    "PolicyctlError",
    "Request",
    "RequestError",
    "__version__",
]
