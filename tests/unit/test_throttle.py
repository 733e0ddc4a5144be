"""Login throttling: after five failures in a minute, wait."""

from __future__ import annotations

from dockvisor.services.identity import LoginThrottle


def test_five_failures_then_a_wait_then_a_success_clears_it() -> None:
    throttle = LoginThrottle(limit=5, window=60)
    for _ in range(4):
        throttle.failed("user:bob", "addr:1")
    assert throttle.retry_after("user:bob", "addr:1") == 0
    throttle.failed("user:bob", "addr:1")
    assert 59 < throttle.retry_after("user:bob") <= 60
    assert throttle.retry_after("user:alice", "addr:2") == 0
    throttle.succeeded("user:bob", "addr:1")
    assert throttle.retry_after("user:bob", "addr:1") == 0


def test_old_failures_fall_out_of_the_window() -> None:
    throttle = LoginThrottle(limit=2, window=0.05)
    throttle.failed("k")
    throttle.failed("k")
    assert throttle.retry_after("k") > 0
    import time

    time.sleep(0.06)
    assert throttle.retry_after("k") == 0
