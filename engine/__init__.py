"""policyctl: a declarative policy engine for LLM traffic. The public API."""

from engine.api import PolicyEngine
from engine.catalog import CatalogError
from engine.decision import Decision
from engine.diagnostics import Diagnostic, PolicyError
from engine.request import Request, RequestError

__version__ = "0.1.0"

__all__ = [
    "CatalogError",
    "Decision",
    "Diagnostic",
    "PolicyEngine",
    "PolicyError",
    "Request",
    "RequestError",
    "__version__",
]
