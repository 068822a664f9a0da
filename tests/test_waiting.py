"""Waiting instead of refusing (`limit … wait up to D`, request `priority`): the waiters of a
bucket key are admitted in priority order as the engine's (fake) clock reaches the bucket's
retry time; a wait that runs out is the usual denial; a full queue is a clear denial;
`evaluate` never waits. Time moves only through the fake clock and `engine.waiters.wake`;
nothing sleeps (`_turn` only lets the event loop run the tasks that are ready)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import duckdb
import httpx
import pytest

from engine import PolicyEngine
from engine.api.waiting import WaitQueues
from engine.diagnostics import PolicyError
from engine.language.formatter import format_text
from engine.language.loader import compile_sources
from engine.routing.request import RequestError, validate
from engine.service.app import create_app
from engine.service.telemetry import Telemetry

START = 1_800_000_000.0
# one token a second, 60 in the bucket: drained, a request waits 1s per waiter ahead of it
WAITING = "limit user 60 per 1m wait up to 5s\n"


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _engine(text: str = WAITING) -> tuple[PolicyEngine, FakeClock]:
    clock = FakeClock()
    engine = PolicyEngine.from_text(text, clock=clock)
    for i in range(60):  # drain the bucket
        assert engine.evaluate({"id": f"d{i}", "user": "u"}).allowed
    return engine, clock


async def _turn() -> None:
    """Let the ready tasks run (a turn of the loop, not a sleep: no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


# ----------------------------------------------------------------------------- priority


@pytest.mark.asyncio
async def test_waiters_are_admitted_by_priority_as_the_clock_advances() -> None:
    engine, clock = _engine()
    admitted: list[int] = []

    async def one(priority: int) -> None:
        decision = await engine.acquire({"id": f"p{priority}", "user": "u", "priority": priority})
        assert decision.allowed, decision.reason
        admitted.append(priority)

    tasks = [asyncio.create_task(one(p)) for p in (1, 5, 3)]
    await _turn()
    assert engine.waiters.depth() == 3 and admitted == []
    for expected in ([5], [5, 3], [5, 3, 1]):
        clock.now += 1.0  # one token
        assert engine.waiters.wake(clock.now) == 1
        await _turn()
        assert admitted == expected
    await asyncio.gather(*tasks)
    stats = engine.waiters.stats()
    assert (stats.waiting, stats.admitted, stats.timed_out) == (0, 3, 0)
    assert stats.wait_seconds == 1.0 + 2.0 + 3.0


@pytest.mark.asyncio
async def test_a_later_higher_priority_request_goes_first() -> None:
    engine, clock = _engine()
    order: list[str] = []

    async def one(rid: str, priority: int) -> None:
        assert (await engine.acquire({"id": rid, "user": "u"}, priority=priority)).allowed
        order.append(rid)

    first = asyncio.create_task(one("early-low", 0))
    await _turn()
    second = asyncio.create_task(one("late-high", 9))  # the `priority=` of X-Priority
    await _turn()
    clock.now += 1.0
    engine.waiters.wake(clock.now)
    await _turn()
    assert order == ["late-high"]
    clock.now += 1.0
    engine.waiters.wake(clock.now)
    await asyncio.gather(first, second)
    assert order == ["late-high", "early-low"]


@pytest.mark.asyncio
async def test_before_the_retry_time_nobody_is_admitted() -> None:
    engine, clock = _engine()
    task = asyncio.create_task(engine.acquire({"id": "w", "user": "u"}))
    await _turn()
    clock.now += 0.999
    assert engine.waiters.wake(clock.now) == 0
    assert engine.waiters.next_due() == START + 1.0
    clock.now = START + 1.0
    assert engine.waiters.wake(clock.now) == 1
    assert (await task).allowed


# ----------------------------------------------------------------------------- budgets


@pytest.mark.asyncio
async def test_a_wait_that_runs_out_is_the_usual_denial_with_retry_after() -> None:
    engine, clock = _engine("limit user 60 per 1m wait up to 1500ms\n")
    task = asyncio.create_task(engine.acquire({"id": "w", "user": "u"}))
    await _turn()
    assert engine.waiters.depth() == 1
    clock.now += 1.0  # the token comes; a request of a higher priority takes it first
    assert engine.evaluate({"id": "vip", "user": "u", "priority": 9}).allowed
    assert engine.waiters.wake(clock.now) == 0
    clock.now += 0.5  # w's 1.5s have run out, half a token short
    assert engine.waiters.wake(clock.now) == 1
    decision = await task
    assert not decision.allowed
    assert decision.denied_by is not None and decision.denied_by.retry_after_ms == 500
    assert decision.reason == "Rate limited by user `u` (requests): retry after 500 ms"
    assert engine.waiters.stats().timed_out == 1


@pytest.mark.asyncio
async def test_a_waiter_whose_turn_is_past_its_wait_is_denied_at_once() -> None:
    engine, clock = _engine("limit user 60 per 1m wait up to 2s\n")
    tasks = [asyncio.create_task(engine.acquire({"id": f"r{i}", "user": "u"})) for i in range(2)]
    await _turn()
    assert engine.waiters.depth() == 2  # turns at 1s and 2s
    decision = await engine.acquire({"id": "r2", "user": "u"})  # its turn: 3s
    assert not decision.allowed and engine.waiters.depth() == 2
    assert decision.denied_by is not None and decision.denied_by.retry_after_ms == 3000
    assert decision.reason == (
        "Rate limited by user `u` (requests): retry after 3000 ms"
        " (2 requests wait ahead in the queue of `user/requests/u`)"
    )
    clock.now += 2.0
    engine.waiters.wake(clock.now)
    assert all(d.allowed for d in await asyncio.gather(*tasks))


@pytest.mark.asyncio
async def test_a_retry_longer_than_the_wait_is_denied_at_once() -> None:
    engine, _ = _engine("limit user 60 per 1m wait up to 500ms\n")
    decision = await engine.acquire({"id": "x", "user": "u"})  # needs 1000 ms
    assert not decision.allowed and decision.denied_by.retry_after_ms == 1000  # type: ignore[union-attr]
    assert engine.waiters.depth() == 0


@pytest.mark.asyncio
async def test_timeout_s_shortens_the_wait_and_zero_never_waits() -> None:
    engine, _ = _engine()
    assert not (await engine.acquire({"id": "a", "user": "u"}, timeout_s=0.5)).allowed
    assert not (await engine.acquire({"id": "b", "user": "u"}, timeout_s=0)).allowed
    assert engine.waiters.depth() == 0


@pytest.mark.asyncio
async def test_a_limit_without_wait_denies_at_once() -> None:
    engine, _ = _engine("limit user 60 per 1m\n")
    decision = await engine.acquire({"id": "x", "user": "u"})
    assert not decision.allowed and engine.waiters.depth() == 0


@pytest.mark.asyncio
async def test_a_denial_by_a_limit_that_does_not_wait_is_not_waited_out() -> None:
    engine, clock = _engine(WAITING + "limit ip 1 per 1h\n")
    assert engine.evaluate({"id": "first", "user": "v", "ip": "10.0.0.1"}).allowed
    decision = await engine.acquire({"id": "x", "user": "v", "ip": "10.0.0.1"})
    assert not decision.allowed and decision.denied_by.scope == "ip"  # type: ignore[union-attr]
    # denied by the user limit first (the limiter stops at the first bucket that denies): it
    # waits, and when its user token comes the ip limit denies it, at once, as usual
    both = asyncio.create_task(engine.acquire({"id": "y", "user": "u", "ip": "10.0.0.1"}))
    await _turn()
    assert engine.waiters.depth() == 1
    clock.now += 1.0
    assert engine.waiters.wake(clock.now) == 1
    decision = await both
    assert not decision.allowed and decision.denied_by.scope == "ip"  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_a_full_queue_is_a_clear_denial() -> None:
    engine, clock = _engine()
    engine.waiters.max_waiters = 2
    tasks = [asyncio.create_task(engine.acquire({"id": f"r{i}", "user": "u"})) for i in range(2)]
    await _turn()
    decision = await engine.acquire({"id": "third", "user": "u"})
    assert not decision.allowed
    assert decision.reason.endswith("the wait queue of `user/requests/u` is full (2 waiting)")
    assert engine.waiters.stats().queue_full == 1
    clock.now += 2.0
    engine.waiters.wake(clock.now)
    assert all(d.allowed for d in await asyncio.gather(*tasks))


def test_evaluate_never_waits() -> None:
    engine, _ = _engine()
    decision = engine.evaluate({"id": "x", "user": "u"})
    assert not decision.allowed and decision.denied_by.retry_after_ms == 1000  # type: ignore[union-attr]
    assert engine.waiters.depth() == 0


def test_acquire_blocking_waits_on_its_thread() -> None:
    engine, clock = _engine()
    got: list[bool] = []
    thread = threading.Thread(
        target=lambda: got.append(engine.acquire_blocking({"id": "b", "user": "u"}).allowed)
    )
    thread.start()
    assert engine.waiters.until_depth(1, timeout_s=10)
    clock.now += 1.0
    assert engine.waiters.wake(clock.now) == 1
    thread.join(10)
    assert got == [True]


# ----------------------------------------------------------------------------- HTTP


@pytest.mark.asyncio
async def test_the_service_holds_a_request_until_it_is_admitted() -> None:
    engine, clock = _engine()
    app = create_app(engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        low = asyncio.create_task(
            client.post("/v1/eval", json={"id": "low", "user": "u"}, headers={"X-Priority": "1"})
        )
        await _turn()
        high = asyncio.create_task(
            client.post("/v1/eval", json={"id": "high", "user": "u"}, headers={"X-Priority": "7"})
        )
        await _turn()
        assert engine.waiters.depth() == 2 and not low.done() and not high.done()
        clock.now += 1.0
        engine.waiters.wake(clock.now)
        answer = await high
        assert answer.status_code == 200 and answer.json()["allowed"] is True
        assert not low.done()
        clock.now += 1.0
        engine.waiters.wake(clock.now)
        assert (await low).json()["allowed"] is True
        # ?wait=false: the answer at once
        denied = await client.post("/v1/eval?wait=false", json={"id": "now", "user": "u"})
        assert denied.json()["allowed"] is False and engine.waiters.depth() == 0
        # a value that is neither true nor false is refused, not taken for "wait"
        typo = await client.post("/v1/eval?wait=flase", json={"id": "typo", "user": "u"})
        assert typo.status_code == 422 and engine.waiters.depth() == 0
        assert typo.json()["detail"][0]["field"] == "wait"
        bad = await client.post("/v1/eval", json={"user": "u"}, headers={"X-Priority": "high"})
        assert bad.status_code == 422
        text = (await client.get("/metrics")).text
    assert "policyctl_waiting_requests 0.0" in text
    assert 'policyctl_waited_total{outcome="admitted"} 2.0' in text
    assert "policyctl_wait_seconds_total 3.0" in text


@pytest.mark.asyncio
async def test_enforce_holds_a_request_then_answers_429_when_the_wait_runs_out() -> None:
    engine, clock = _engine("limit user 60 per 1m wait up to 1s\n")
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        first = asyncio.create_task(client.post("/v1/enforce", json={"id": "a", "user": "u"}))
        await _turn()
        # `b`'s turn (2s, behind `a`) is past its 1s: answered at once, Retry-After counts `a`
        second = await client.post("/v1/enforce", json={"id": "b", "user": "u"})
        assert second.status_code == 429 and second.headers["retry-after"] == "2"
        assert engine.waiters.depth() == 1
        clock.now += 1.0  # the token comes, and a request of a higher priority takes it
        vip = await client.post(
            "/v1/eval?wait=false", json={"id": "vip", "user": "u"}, headers={"X-Priority": "9"}
        )
        assert vip.json()["allowed"] is True
        engine.waiters.wake(clock.now)  # `a`'s second has run out, with no token left for it
        late = await first
    assert late.status_code == 429 and late.headers["retry-after"] == "1"


def test_telemetry_counts_the_waiters() -> None:
    engine, _ = _engine()
    lines = Telemetry(engine).exposition("")[0].decode()
    assert "policyctl_waiting_requests 0.0" in lines


# ----------------------------------------------------------------------------- language


def test_priority_is_a_whole_number_within_bounds() -> None:
    assert validate({"priority": 3}).priority == 3
    for bad in (1001, -1001, 2.5, "high", True):
        with pytest.raises(RequestError):
            validate({"priority": bad})


def test_request_priority_can_be_read_by_a_condition() -> None:
    engine = PolicyEngine.from_text('deny "batch" when request.priority < 0\n')
    assert not engine.evaluate({"priority": -1}).allowed
    assert engine.evaluate({"priority": 0}).allowed


def test_wait_parses_compiles_and_formats() -> None:
    text = 'limit user "vip" tokens 100k per 1h burst 10k wait up to 30s when request.stream\n'
    (limit,) = compile_sources([("p.policy", text)]).program.limits
    assert limit.wait_ms == 30_000
    assert format_text(text) == text
    assert format_text("limit user 10 per 1m   wait up   to 2s\n") == (
        "limit user 10 per 1m wait up to 2s\n"
    )


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("limit user 10 per 1m wait up to 0s\n", "E0420"),
        ("limit user 10 per 1m wait up to 3\n", "E0420"),
        ("limit ip 10 per 1s wait up to 2s\n", "E0421"),
        ("shadow limit user 10 per 1m wait up to 2s\n", "E0422"),
        ("shadow limit user 10 per 1m wait up to 0s\n", "E0422"),
        ('limit model "openai/gpt-4o" concurrent 8 wait up to 2s\n', "E0423"),
        ("limit user concurrent 2 lease 5m wait up to 2s when request.stream\n", "E0423"),
    ],
)
def test_nonsense_waits_are_refused(text: str, code: str) -> None:
    with pytest.raises(PolicyError) as err:
        compile_sources([("p.policy", text)])
    assert [d.code for d in err.value.diagnostics] == [code]


ROUTE_WAITS = """defaults {
    wait up to 3s
}

route batch when request.priority < 0 {
    strategy cost
    wait up to 1s
}

route fast when request.priority > 5 {
    strategy cost
}

limit user         60 per 1m
limit user tokens  1M per 1m wait up to 500ms
"""


@pytest.mark.asyncio
async def test_a_route_wait_lets_its_limits_denials_wait() -> None:
    assert format_text(ROUTE_WAITS) == ROUTE_WAITS
    program = compile_sources([("p.policy", ROUTE_WAITS)]).program
    assert program.by_name["batch"].settings.wait_ms == 1000
    assert program.by_name["fast"].settings.wait_ms == 3000  # from `defaults`
    engine, clock = _engine(ROUTE_WAITS)
    # `batch` waits up to 1s: enough for the next token
    task = asyncio.create_task(engine.acquire({"id": "b", "user": "u", "priority": -1}))
    await _turn()
    assert engine.waiters.depth() == 1
    clock.now += 1.0
    engine.waiters.wake(clock.now)
    assert (await task).allowed
    # `fast` waits too (3s, from `defaults`)
    ahead = asyncio.create_task(engine.acquire({"id": "f1", "user": "u", "priority": 9}))
    await _turn()
    assert engine.waiters.depth() == 1
    clock.now += 1.0
    engine.waiters.wake(clock.now)
    assert (await ahead).allowed


def test_a_route_wait_of_zero_is_refused() -> None:
    with pytest.raises(PolicyError) as err:
        compile_sources([("p.policy", "route r {\n    wait up to 0s\n}\n")])
    assert [d.code for d in err.value.diagnostics] == ["E0420"]


def test_a_policy_without_wait_has_no_waiters() -> None:
    engine = PolicyEngine.from_text("limit user 1 per 1m\n")
    assert isinstance(engine.waiters, WaitQueues) and engine.waiters.next_due() is None


# ----------------------------------------------------------------------------- fairness


@pytest.mark.asyncio
async def test_waiters_of_one_priority_are_admitted_in_arrival_order() -> None:
    engine, clock = _engine()
    admitted: list[str] = []

    async def one(rid: str) -> None:
        assert (await engine.acquire({"id": rid, "user": "u", "priority": 2})).allowed
        admitted.append(rid)

    tasks = []
    for rid in ("a", "b", "c", "d"):
        tasks.append(asyncio.create_task(one(rid)))
        await _turn()  # each arrives after the one before
    assert engine.waiters.depth() == 4
    for n in range(1, 5):
        clock.now += 1.0
        assert engine.waiters.wake(clock.now) == 1
        await _turn()
        assert admitted == ["a", "b", "c", "d"][:n]
    await asyncio.gather(*tasks)


@pytest.mark.asyncio
async def test_a_newcomer_queues_behind_waiters_even_when_the_tokens_are_there() -> None:
    engine, clock = _engine()
    admitted: list[str] = []

    async def one(rid: str, priority: int = 0) -> None:
        decision = await engine.acquire({"id": rid, "user": "u", "priority": priority})
        assert decision.allowed, decision.reason
        admitted.append(rid)

    first = asyncio.create_task(one("first"))
    await _turn()
    clock.now += 1.0  # the token is in the bucket; nobody has woken the queue yet
    # `evaluate` (which never waits) does not take it: denied, its retry counting `first`
    denied = engine.evaluate({"id": "eval", "user": "u"})
    assert not denied.allowed and denied.denied_by is not None
    assert denied.denied_by.retry_after_ms == 1000  # `first` now, then its own in 1s
    assert denied.reason == (
        "Rate limited by user `u` (requests): retry after 1000 ms"
        " (1 request waits ahead in the queue of `user/requests/u`)"
    )
    # nor an `acquire` with no time to wait, of the same or a lower priority
    for priority in (0, -1):
        now = await engine.acquire({"id": "no", "user": "u", "priority": priority}, timeout_s=0)
        assert not now.allowed and now.denied_by.retry_after_ms == 1000  # type: ignore[union-attr]
    assert engine.waiters.depth() == 1 and admitted == []
    # a newcomer that waits queues behind `first` (and, the time being due, wakes the queue)
    late = asyncio.create_task(one("late"))
    await _turn()
    assert admitted == ["first"] and engine.waiters.depth() == 1
    clock.now += 1.0
    assert engine.waiters.wake(clock.now) == 1
    await asyncio.gather(first, late)
    assert admitted == ["first", "late"]


@pytest.mark.asyncio
async def test_a_higher_priority_newcomer_takes_free_tokens_at_once() -> None:
    engine, clock = _engine()
    task = asyncio.create_task(engine.acquire({"id": "batch", "user": "u", "priority": -5}))
    await _turn()
    clock.now += 1.0
    # higher than every waiter of the key: it would be the head of the queue, so it goes
    vip = engine.evaluate({"id": "vip", "user": "u", "priority": 5})
    assert vip.allowed
    assert engine.waiters.wake(clock.now) == 0  # the token went to `vip`
    assert engine.waiters.next_due() == START + 2.0
    clock.now += 1.0
    engine.waiters.wake(clock.now)
    assert (await task).allowed


@pytest.mark.asyncio
async def test_a_small_request_does_not_take_tokens_a_large_waiter_is_gathering() -> None:
    # 1,000 tokens a second, 60,000 in the bucket: drained
    clock = FakeClock()
    engine = PolicyEngine.from_text("limit user tokens 60k per 1m wait up to 10s\n", clock=clock)
    big = {"user": "u", "input_tokens": 2999, "max_tokens": 1}
    small = {"user": "u", "input_tokens": 9, "max_tokens": 1}
    for i in range(20):  # 60,000 tokens taken: drained
        assert engine.evaluate({"id": f"d{i}", **big}).allowed
    task = asyncio.create_task(engine.acquire({"id": "big", **big}))  # needs 3s of refill
    await _turn()
    assert engine.waiters.depth() == 1
    clock.now += 1.0  # 1,000 tokens in the bucket: enough for `small`, not for `big`
    denied = engine.evaluate({"id": "small", **small})
    assert not denied.allowed and denied.denied_by is not None
    assert denied.denied_by.retry_after_ms == 2010  # `big`'s 2s left, then its own 10 tokens
    waiting = asyncio.create_task(engine.acquire({"id": "small-waits", **small}))
    await _turn()
    assert engine.waiters.depth() == 2
    clock.now += 2.0
    assert engine.waiters.wake(clock.now) == 1 and (await task).allowed
    clock.now += 0.01
    assert engine.waiters.wake(clock.now) == 1 and (await waiting).allowed


@pytest.mark.asyncio
async def test_a_waiter_pushed_past_its_wait_by_a_higher_priority_is_answered_at_once() -> None:
    engine, clock = _engine("limit user 60 per 1m wait up to 2s\n")
    early = asyncio.create_task(engine.acquire({"id": "a", "user": "u"}))
    await _turn()
    low = asyncio.create_task(engine.acquire({"id": "low", "user": "u"}))  # turn 2s: fits
    await _turn()
    high = asyncio.create_task(engine.acquire({"id": "high", "user": "u", "priority": 3}))
    await _turn()
    # `high` goes first (1s), `a` second (2s): `low`'s turn moved to 3s, past its 2s
    assert low.done() and engine.waiters.depth() == 2
    decision = low.result()
    assert not decision.allowed and decision.denied_by.retry_after_ms == 3000  # type: ignore[union-attr]
    assert engine.waiters.stats().timed_out == 1
    clock.now += 2.0
    engine.waiters.wake(clock.now)
    assert (await high).allowed and (await early).allowed


@pytest.mark.asyncio
async def test_the_bounded_queue_still_denies_behind_a_fair_line() -> None:
    engine, clock = _engine("limit user 60 per 1m wait up to 10s\n")
    engine.waiters.max_waiters = 3
    tasks = [asyncio.create_task(engine.acquire({"id": f"r{i}", "user": "u"})) for i in range(3)]
    await _turn()
    clock.now += 1.0  # a token is there, but three wait for it: the fourth is refused
    decision = await engine.acquire({"id": "fourth", "user": "u"})
    assert not decision.allowed and decision.denied_by.retry_after_ms == 3000  # type: ignore[union-attr]
    assert decision.reason.endswith("the wait queue of `user/requests/u` is full (3 waiting)")
    assert engine.waiters.stats().queue_full == 1
    clock.now += 2.0
    engine.waiters.wake(clock.now)
    assert all(d.allowed for d in await asyncio.gather(*tasks))


def test_evaluate_without_wait_never_touches_the_queues() -> None:
    engine = PolicyEngine.from_text("limit user 1 per 1m\n")
    assert engine.evaluate({"id": "a", "user": "u"}).allowed
    assert not engine.evaluate({"id": "b", "user": "u"}).allowed
    assert "_waiters" not in vars(engine)  # no queues made: nothing was asked of them


@pytest.mark.asyncio
async def test_a_denial_made_by_the_queue_is_in_the_decision_log(tmp_path: Path) -> None:
    clock = FakeClock()
    policy = tmp_path / "p.policy"
    policy.write_text(WAITING)
    state = str(tmp_path / "state.duckdb")
    engine = PolicyEngine(policy, state=state, clock=clock)
    for i in range(60):
        assert engine.evaluate({"id": f"d{i}", "user": "u"}).allowed
    task = asyncio.create_task(engine.acquire({"id": "w", "user": "u"}))
    await _turn()
    clock.now += 1.0  # the token is `w`'s: `late` is denied by the queue, not the bucket
    assert not engine.evaluate({"id": "late", "user": "u"}).allowed
    engine.waiters.wake(clock.now)
    assert (await task).allowed
    engine.close()
    con = duckdb.connect(state)
    rows = con.execute(
        "SELECT request_id, allowed FROM decisions WHERE request_id IN ('w', 'late')"
        " ORDER BY request_id"
    ).fetchall()
    violations = con.execute("SELECT count(*) FROM rate_limit_violations").fetchone()
    con.close()
    assert rows == [("late", False), ("w", True)]
    assert violations == (0,)  # the bucket had the token: no violation of it


# ----------------------------------------------------------------------------- stopping


@pytest.mark.asyncio
async def test_release_answers_every_waiter_with_the_denial_of_a_wait_run_out_now() -> None:
    """A stop does not wait out the waits (`wait up to 1m`): each waiter gets at once what
    its wait running out now would give, the usual denial with its `retry_after_ms`, in
    priority order; counted as `shutdown`, not `timed_out`; and nobody waits afterwards."""
    engine, clock = _engine("limit user 60 per 1m wait up to 1m\n")
    tasks = [
        asyncio.create_task(engine.acquire({"id": f"w{i}", "user": "u", "priority": i}))
        for i in range(3)
    ]
    await _turn()
    assert engine.waiters.depth() == 3
    clock.now += 0.5  # half a token: no one's turn yet
    assert engine.waiters.release() == 3
    decisions = [await task for task in tasks]
    assert [d.allowed for d in decisions] == [False, False, False]
    for decision in decisions:
        assert decision.denied_by is not None and decision.denied_by.retry_after_ms == 500
        assert decision.reason == "Rate limited by user `u` (requests): retry after 500 ms"
    stats = engine.waiters.stats()
    assert (stats.waiting, stats.shutdown, stats.timed_out, stats.admitted) == (0, 3, 0, 0)
    assert stats.wait_seconds == 1.5
    # from now on nobody waits: a request the limit denies is answered at once
    later = asyncio.create_task(engine.acquire({"id": "later", "user": "u"}))
    await _turn()
    assert later.done() and not later.result().allowed
    assert engine.waiters.depth() == 0 and engine.waiters.released


@pytest.mark.asyncio
async def test_release_admits_a_waiter_whose_tokens_are_there() -> None:
    """The answer a wait running out now gives: the head's token has come, so it is
    admitted (`admitted`); the one behind it is denied (`shutdown`)."""
    engine, clock = _engine("limit user 60 per 1m wait up to 1m\n")
    first = asyncio.create_task(engine.acquire({"id": "first", "user": "u"}))
    await _turn()
    second = asyncio.create_task(engine.acquire({"id": "second", "user": "u"}))
    await _turn()
    clock.now += 1.0  # `first`'s token, not yet handed over (no `wake`)
    assert engine.waiters.release() == 2
    assert (await first).allowed and not (await second).allowed
    stats = engine.waiters.stats()
    assert (stats.admitted, stats.shutdown) == (1, 1)


def test_close_answers_a_blocked_waiter_with_its_denial_not_engine_closed(
    tmp_path: Path,
) -> None:
    """`PolicyEngine.close()` with a thread blocked in `acquire_blocking`: the thread gets
    its denial (decided before the engine closes, not `EngineClosedError`), and the
    `rate_limit_waits` row says `shutdown`."""
    clock = FakeClock()
    policy = tmp_path / "p.policy"
    policy.write_text("limit user 60 per 1m wait up to 1m\n")
    state = str(tmp_path / "state.duckdb")
    engine = PolicyEngine(policy, state=state, clock=clock)
    for i in range(60):
        assert engine.evaluate({"id": f"d{i}", "user": "u"}).allowed
    got: list[object] = []

    def wait() -> None:
        try:
            got.append(engine.acquire_blocking({"id": "held", "user": "u"}))
        except Exception as err:  # the test asserts on what came back
            got.append(err)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    assert engine.waiters.until_depth(1, timeout_s=10)
    clock.now += 0.25
    engine.close()
    thread.join(10)
    assert not thread.is_alive()
    [decision] = got
    assert not isinstance(decision, BaseException), decision
    assert not decision.allowed  # type: ignore[attr-defined]
    assert decision.denied_by.retry_after_ms == 750  # type: ignore[attr-defined]
    con = duckdb.connect(state, read_only=True)
    waits = con.execute(
        "SELECT request_id, bucket_key, waited_ms, outcome FROM rate_limit_waits"
    ).fetchall()
    logged = con.execute("SELECT allowed FROM decisions WHERE request_id = 'held'").fetchall()
    con.close()
    assert waits == [("held", "user/requests/u", 250.0, "shutdown")]
    assert logged == [(False,)]
