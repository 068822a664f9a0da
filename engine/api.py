"""PolicyEngine: load and compile a policy set, then turn requests into decisions.

    from engine import PolicyEngine
    engine = PolicyEngine()                       # the packaged default policy set
    decision = engine.evaluate({"id": "r1", "user": "alice", "prompt": "hi"})
    decision.provider, decision.model, decision.reason

The compiled Program is immutable; evaluations read `self._program` once, so a future
reload can swap it with one reference assignment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from engine.compiler import Program
from engine.decision import Decision
from engine.diagnostics import Diagnostic
from engine.evaluator import EvalState, evaluate
from engine.loader import compile_sources, load_policy
from engine.metrics import MetricsView, NoMetrics
from engine.request import Request, env_of


class PolicyEngine:
    def __init__(
        self,
        policy: str | os.PathLike[str] | None = None,
        *,
        metrics: MetricsView | None = None,
    ) -> None:
        """`policy`: a `.policy` file or a directory of them; None for the packaged defaults.

        Raises `PolicyError` (every diagnostic, rendered in `str(err)`) if it does not check.
        """
        loaded = load_policy(policy)
        self._program = loaded.program
        self.warnings: tuple[Diagnostic, ...] = loaded.warnings
        self._metrics: MetricsView = metrics or NoMetrics()
        self._state = EvalState()

    @classmethod
    def from_text(cls, text: str, name: str = "<policy>") -> PolicyEngine:
        """An engine from policy text (a `catalog` path is relative to the working directory)."""
        engine = cls.__new__(cls)
        loaded = compile_sources([(name, text)])
        engine._program = loaded.program
        engine.warnings = loaded.warnings
        engine._metrics = NoMetrics()
        engine._state = EvalState()
        return engine

    @property
    def program(self) -> Program:
        return self._program

    @property
    def version(self) -> str:
        return self._program.version

    def evaluate(self, request: Mapping[str, Any] | Request, *, explain: bool = False) -> Decision:
        """Route one request. Raises `RequestError` naming the fields of a bad request."""
        program = self._program  # one snapshot per evaluation
        env = env_of(request)
        return evaluate(program, env, metrics=self._metrics, state=self._state, explain=explain)
