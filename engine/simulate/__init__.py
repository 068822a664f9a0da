"""Replay synthetic traffic against the engine: `policyctl simulate SCENARIO.yaml`.

A scenario (YAML, validated with pydantic) gives a synthetic provider per catalog model
(latency lognormal from a mean and a p95 or a sigma, a failure rate, and optionally a
`drift` or an `outage` starting at a request number), a traffic mix (request templates
with weights), an arrival rate, a seed, and the strategies to compare (each also run with
an `explore` setting when the scenario gives one). For each strategy a
fresh engine runs with `defaults { strategy X … }` plus the scenario's `policy` settings and
`limits`, on a fake clock that the arrivals advance (nothing sleeps). Each allowed request
draws its outcome from the chosen model's provider, and the outcome is fed back with
`engine.record` when the call completes in simulated time (calls overlap, as they do in
production: a failing provider keeps receiving requests until its failures come back).

Three baselines run on the same traffic and providers without the engine: uniform random
over the models that can serve each request, always Claude 3.5 Sonnet, and an oracle that
knows the world and takes the cheapest model that is up and good enough (a template's
`min_quality` against the models' true `quality`); every row's regret is against it.

Reproducible: the traffic (templates and arrival times) comes from one seeded generator,
and every run draws its outcomes from its own generator seeded the same way, one latency
and one failure draw per request whatever the route — so runs are independent of each
other (a subset of strategies gives the same rows) and compare on common random numbers.

    from engine.simulate import load_scenario, simulate
    report = simulate(load_scenario("examples/simulations/design.yaml"))
    report.to_dict()["rows"]

Templates with a `session` are agents (turns with growing prompts, read from the
providers' prompt caches); `affinity` and `compare_settlement` run each strategy again with
the scenario's affinity, and with outcomes that settle no reservation.

With a `split` in the policy (and `users: N` in the scenario to key it by user), each
strategy run also reports every arm's figures with 95% confidence intervals, and each arm
against the first.

A template's `content` makes its requests carry generated conversations with the prompt
features it claims (`content`), and a scenario's `policies` runs whole policy files as
rows: content-aware routing against the strategies, on bad answers and regret.

The rooms, in import order: `content` (prompt bodies), `world` (synthetic providers, their
draws, the traffic and its users), `scenario` (the YAML file, validated), `run`
(strategies against the engine, baselines), `stats` (confidence intervals), `ab` (per-arm
figures of a split), `usage` (prompt caches, and the real usage of token and spend
limits), `report` (`simulate`, the report's rows and the plot).
"""

from engine.simulate.report import PlotUnavailable, Report, plot, require_matplotlib, simulate
from engine.simulate.run import SONNET, Run
from engine.simulate.scenario import (
    DEFAULT_STRATEGIES,
    MAX_REQUESTS,
    Scenario,
    ScenarioError,
    load_scenario,
    split_strategies,
)
from engine.simulate.world import Provider

__all__ = [
    "DEFAULT_STRATEGIES",
    "MAX_REQUESTS",
    "SONNET",
    "PlotUnavailable",
    "Provider",
    "Report",
    "Run",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "plot",
    "require_matplotlib",
    "simulate",
    "split_strategies",
]
