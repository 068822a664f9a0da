"""The HTTP decision service (`policyctl serve`): thin over `PolicyEngine`."""

from engine.service.app import create_app

__all__ = ["create_app"]
