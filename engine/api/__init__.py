"""The library API: `PolicyEngine` (load, compile, swap on reload, evaluate, record) and
what it runs beside the evaluator (the policy watcher)."""

from engine.api.policy_engine import PolicyEngine

__all__ = ["PolicyEngine"]
