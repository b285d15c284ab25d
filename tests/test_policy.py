"""Pure routing policies: who answers, the Wilson bound, and when a task rolls back."""

from __future__ import annotations

import pytest

from insource.demo import data as demo_data
from insource.routing.policy import (
    Answerer,
    RoutePolicy,
    choose_threshold,
    decide,
    expected_threshold,
    live_threshold,
    min_samples,
    needs_prediction,
    should_roll_back,
    wilson_lower,
    wilson_upper,
)
from insource.routing.resilience import CircuitBreaker, RetryBudget, backoff_s
from insource.routing.tokens import completion_tokens, prompt_tokens
from insource.testing import wire


def policy(mode: str, **kw: float) -> RoutePolicy:
    return RoutePolicy("t", "t@v1", mode, **kw)  # type: ignore[arg-type]


def test_wilson_lower_bound_known_values() -> None:
    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(50, 100) == pytest.approx(0.4038, abs=1e-4)
    assert wilson_lower(20, 20) == pytest.approx(0.8389, abs=1e-4)
    assert wilson_lower(990, 1000) < 0.99 < 990 / 1000 + 1e-9


def test_rollback_waits_until_the_bound_means_something() -> None:
    assert not should_roll_back(21, 21, 0.9)  # perfect, but its lower bound is 0.85 only because n is small
    assert not should_roll_back(38, 40, 0.9)  # 95%: one unlucky audit must not roll a good student back
    n = min_samples(0.9)
    assert wilson_lower(int(0.95 * n) + 1, n) >= 0.9  # by then a 95% student clears a 0.9 floor
    assert should_roll_back(150, 200, 0.9) and not should_roll_back(192, 200, 0.9)
    assert should_roll_back(1140, 1200, 0.99) and not should_roll_back(1200, 1200, 0.99)


def test_a_student_clearly_below_the_floor_rolls_back_after_a_few_dozen_comparisons() -> None:
    assert wilson_upper(0, 0) == 1.0 and wilson_upper(20, 20) == pytest.approx(1.0)
    assert wilson_upper(0, 20) == pytest.approx(0.1611, abs=1e-4)
    for floor in (0.8, 0.9, 0.95, 0.99, 0.999):  # min_samples: 48 ... 13,328 comparisons
        assert not should_roll_back(0, 19, floor)  # nothing is judged on fewer than 20
        assert should_roll_back(0, 20, floor)  # a student that never agrees goes at 20, whatever the floor
        assert should_roll_back(2, 25, floor)  # a drifted teacher: 8% agreement
    assert should_roll_back(12, 20, 0.9) and should_roll_back(30, 40, 0.95)


def false_rollback_chance(p: float, floor: float, until: int) -> float:
    """Exact chance that a student agreeing with probability `p` is rolled back within `until` comparisons."""
    alive = [1.0]  # alive[k]: chance of k agreements so far without a rollback
    gone = 0.0
    for n in range(1, until + 1):
        step = [0.0] * (n + 1)
        for k, mass in enumerate(alive):
            step[k] += mass * (1 - p)
            step[k + 1] += mass * p
        for k in range(n + 1):
            if step[k] and should_roll_back(k, n, floor):
                gone, step[k] = gone + step[k], 0.0
        alive = step
    return gone


def test_a_sound_student_survives_small_samples() -> None:
    for floor, limit in ((0.8, 0.001), (0.9, 0.001), (0.95, 0.005), (0.99, 0.02)):
        sound = (1.0 + floor) / 2.0  # the student min_samples protects, judged after every comparison
        assert false_rollback_chance(sound, floor, min_samples(floor) - 1) < limit, floor
    assert false_rollback_chance(0.5, 0.9, 30) > 0.99  # while a coin flip goes within 30


def test_a_live_threshold_needs_both_the_samples_and_the_student_s_own_expectation() -> None:
    sure, unsure = [0.999] * 60, [0.9] * 40
    assert expected_threshold([0.0, *unsure, *sure], 0.98) == 0.999  # mean 0.96 over all: only the sure ones
    assert expected_threshold([*unsure, *sure], 0.95) == 0.9 and expected_threshold(unsure, 0.95) is None
    lucky = [True] * 100  # no disagreement among 40 answers the student expects 4 of to disagree
    assert choose_threshold([*sure, *unsure], lucky, 0.98) == 0.9  # the samples alone would answer them
    assert live_threshold([*sure, *unsure], lucky, 0.98) == 0.999  # the expectation vetoes that
    overpromise = [i % 10 != 0 for i in range(60)] + [True] * 40  # the sure ones disagree 10% of the time
    assert (
        expected_threshold([*sure, *unsure], 0.98) == 0.999
        and choose_threshold([*sure, *unsure], overpromise, 0.98) is None
    )
    assert live_threshold([*sure, *unsure], overpromise, 0.98) is None  # the samples veto the confidences


def test_student_tokens_are_counted_like_the_teacher_counts_them() -> None:
    text = "hello, I want my money back for order 12345, the blender arrived broken"
    messages = demo_data.build_messages(text)
    assert prompt_tokens(messages) == wire.count_prompt_tokens(messages)  # what the fake teacher reports
    assert prompt_tokens(messages) < len(str(messages)) // 4  # not the request's size
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi there"}, {"type": "image_url"}]}]
    assert prompt_tokens(parts) == wire.count_prompt_tokens(parts) == 3 + 3 + 2 + 85
    named = [{"role": "user", "name": "ann", "content": "hi"}]
    assert prompt_tokens(named) == wire.count_prompt_tokens(named)
    assert completion_tokens("refund_request") == 1 and completion_tokens("refund_request", 3) == 3
    assert prompt_tokens(None) == 3


def test_modes() -> None:
    sure, unsure = (0.95, False), (0.5, False)
    assert decide(policy("shadow"), 0.9, *sure, (0.0, 0.0)).answerer is Answerer.TEACHER
    assert decide(policy("shadow"), 0.9, *sure, (0.0, 0.0)).audit  # shadow always compares
    assert decide(policy("cascade", threshold=0.9), 0.9, *sure, (0.5, 0.5)).answerer is Answerer.STUDENT
    assert decide(policy("cascade"), 0.9, *unsure, (0.5, 0.5)).answerer is Answerer.TEACHER
    assert decide(policy("cascade"), 0.9, 0.99, True, (0.5, 0.5)).answerer is Answerer.TEACHER  # out of distribution
    assert not decide(policy("cascade"), 0.9, *sure, (0.5, 0.5)).audit  # no audits unless audit_rate > 0
    assert decide(policy("full", audit_rate=0.3), 0.9, *unsure, (0.5, 0.2)).audit
    assert decide(policy("full"), 0.9, None, False, (0.5, 0.5)).answerer is Answerer.TEACHER  # student failed
    assert needs_prediction(policy("canary", percent=10), 0.05) and not needs_prediction(
        policy("canary", percent=10), 0.5
    )
    inactive = RoutePolicy("t", "t@v1", "full", active=False)
    assert decide(inactive, 0.9, *sure, (0.0, 0.0)).answerer is Answerer.TEACHER


def test_circuit_breaker_and_retry_budget() -> None:
    cb = CircuitBreaker(failures=2, reset_s=10)
    cb.record_failure(now=0)
    assert cb.allow(now=0)
    cb.record_failure(now=0)
    assert not cb.allow(now=5) and cb.state == "open"
    assert cb.allow(now=10.5) and not cb.allow(now=10.6)  # half-open: one probe
    cb.end_trial()  # the probe was cancelled: the breaker stays open, and the next request may probe
    assert cb.state == "open" and cb.allow(now=10.7) and not cb.allow(now=10.8)
    cb.record_success()
    assert cb.state == "closed" and cb.allow()
    budget = RetryBudget(ratio=0.2, minimum=3, active_requests=100, active_retries=19)
    assert budget.can_retry()
    budget.active_retries = 20
    assert not budget.can_retry()
    assert 0 <= backoff_s(3) <= 0.4
