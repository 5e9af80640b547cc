"""Pure sign-in throttling decisions: per-address buckets, per-email backoff, peer keys,
admission classes. No database, no server; a fake clock where time matters."""

from __future__ import annotations

import uuid

import pytest

from ticketd.auth.throttle import BackoffPolicy, FailureBackoff, Outcome, SignInThrottle
from ticketd.edge.admission import Admission, CallClass, CallerBudgets, classify
from ticketd.edge.peer import peer_address
from ticketd.errors import Reason, ResourceExhausted


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_schedule_starts_at_the_threshold_doubles_and_is_capped() -> None:
    policy = BackoffPolicy(threshold=5, base=1.0, cap=300.0)
    assert [policy.delay(n) for n in range(5)] == [0.0] * 5
    assert [policy.delay(n) for n in range(5, 10)] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert policy.delay(13) == 256.0
    assert policy.delay(14) == 300.0
    assert policy.delay(10_000) == 300.0  # no overflow far past the cap


def test_allowance_lets_no_parallel_burst_outrun_the_threshold() -> None:
    policy = BackoffPolicy(threshold=5)
    assert [policy.allowance(n) for n in (0, 3, 4, 5, 50)] == [5, 2, 1, 1, 1]


def test_email_backoff_blocks_after_threshold_and_success_resets() -> None:
    clock = Clock()
    backoff = FailureBackoff(BackoffPolicy(threshold=3, base=1.0, cap=8.0), clock=clock)
    key = "victim@example.test"
    for _ in range(3):
        assert backoff.begin(key) is None
        backoff.end(key, Outcome.FAILURE)
    wait = backoff.begin(key)
    assert wait == pytest.approx(1.0)
    clock.now += 0.5
    assert backoff.begin(key) == pytest.approx(0.5)  # refused attempts do not extend it
    clock.now += 0.6
    assert backoff.begin(key) is None
    backoff.end(key, Outcome.FAILURE)  # 4th failure: 2 s
    assert backoff.begin(key) == pytest.approx(2.0)
    clock.now += 2.0
    assert backoff.begin(key) is None
    backoff.end(key, Outcome.SUCCESS)
    assert backoff.failures(key) == 0
    # After the reset the full allowance is back.
    for _ in range(3):
        assert backoff.begin(key) is None
        backoff.end(key, Outcome.FAILURE)
    assert backoff.begin(key) is not None


def test_email_backoff_is_capped() -> None:
    clock = Clock()
    backoff = FailureBackoff(BackoffPolicy(threshold=1, base=1.0, cap=4.0), clock=clock)
    for _ in range(10):
        while (wait := backoff.begin("x@y.z")) is not None:
            clock.now += wait
        backoff.end("x@y.z", Outcome.FAILURE)
    assert backoff.begin("x@y.z") == pytest.approx(4.0)


def test_concurrent_attempts_are_bounded_by_the_allowance() -> None:
    backoff = FailureBackoff(BackoffPolicy(threshold=3), clock=Clock())
    begun = [backoff.begin("a@b.cd") for _ in range(10)]
    assert begun[:3] == [None, None, None]
    assert all(w is not None for w in begun[3:])


def test_not_tried_attempts_do_not_count_as_failures() -> None:
    backoff = FailureBackoff(BackoffPolicy(threshold=1), clock=Clock())
    for _ in range(5):
        assert backoff.begin("a@b.cd") is None
        backoff.end("a@b.cd", Outcome.NOT_TRIED)
    assert backoff.failures("a@b.cd") == 0


def test_failures_are_forgotten_after_a_quiet_period() -> None:
    clock = Clock()
    policy = BackoffPolicy(threshold=2, forget_after=60.0)
    backoff = FailureBackoff(policy, clock=clock)
    for _ in range(2):
        backoff.begin("a@b.cd")
        backoff.end("a@b.cd", Outcome.FAILURE)
    clock.now += 61.0
    assert backoff.begin("a@b.cd") is None
    assert backoff.failures("a@b.cd") == 0


def test_email_state_memory_is_bounded() -> None:
    backoff = FailureBackoff(BackoffPolicy(threshold=1), max_keys=100, clock=Clock())
    for i in range(1000):
        backoff.begin(f"user{i}@example.test")
        backoff.end(f"user{i}@example.test", Outcome.FAILURE)
    assert len(backoff._states) <= 100


def _attempt(throttle: SignInThrottle, peer: str, outcome: Outcome = Outcome.NOT_TRIED) -> bool:
    """One attempt from `peer` ending with `outcome`; returns its `heavy` flag."""
    with throttle.admit_peer(peer) as attempt:
        attempt.finish(outcome)
        return attempt.heavy


def test_peer_bucket_refuses_past_the_burst_with_retry_info() -> None:
    clock = Clock()
    throttle = SignInThrottle(peer_rate=2.0, peer_burst=3, failures_per_email=5, clock=clock)
    for _ in range(3):
        _attempt(throttle, "10.0.0.1", Outcome.SUCCESS)
    with pytest.raises(ResourceExhausted) as err:
        throttle.admit_peer("10.0.0.1")
    assert err.value.reason is Reason.TOO_MANY_ATTEMPTS
    assert err.value.retry_after == pytest.approx(0.5)
    _attempt(throttle, "10.0.0.2")  # another address has its own bucket
    clock.now += 0.5
    _attempt(throttle, "10.0.0.1")  # one token back after 1/rate


def test_an_address_past_half_its_burst_is_a_heavy_user() -> None:
    clock = Clock()
    throttle = SignInThrottle(peer_rate=1.0, peer_burst=10, failures_per_email=5, clock=clock)
    heavy = [_attempt(throttle, "10.0.0.1", Outcome.SUCCESS) for _ in range(10)]
    assert heavy == [False] * 5 + [True] * 5
    clock.now += 60.0  # a quiet minute: a person signing in again is not heavy
    assert _attempt(throttle, "10.0.0.1") is False
    assert _attempt(throttle, "10.0.0.2") is False


def test_an_address_whose_sign_ins_all_fail_backs_off() -> None:
    clock = Clock()
    throttle = SignInThrottle(peer_rate=100.0, peer_burst=4, failures_per_email=99, clock=clock)
    for _ in range(4):
        _attempt(throttle, "10.0.0.9", Outcome.FAILURE)
    with pytest.raises(ResourceExhausted) as err:
        throttle.admit_peer("10.0.0.9")  # the bucket has tokens; the backoff says no
    assert err.value.reason is Reason.TOO_MANY_ATTEMPTS
    assert err.value.retry_after == pytest.approx(1.0)
    clock.now += 1.0
    _attempt(throttle, "10.0.0.9", Outcome.FAILURE)
    with pytest.raises(ResourceExhausted) as err:
        throttle.admit_peer("10.0.0.9")
    assert err.value.retry_after == pytest.approx(2.0)
    clock.now += 2.0
    _attempt(throttle, "10.0.0.9", Outcome.SUCCESS)  # someone there knows a password
    clock.now += 1.0  # (the bucket refills)
    for _ in range(3):
        _attempt(throttle, "10.0.0.9", Outcome.FAILURE)
    _attempt(throttle, "10.0.0.9")  # not blocked: the success reset the count


def test_a_refusal_by_the_bucket_does_not_count_as_a_failure() -> None:
    clock = Clock()
    throttle = SignInThrottle(peer_rate=0.001, peer_burst=2, failures_per_email=9, clock=clock)
    for _ in range(2):
        _attempt(throttle, "10.0.0.3", Outcome.SUCCESS)
    for _ in range(10):
        with pytest.raises(ResourceExhausted):
            throttle.admit_peer("10.0.0.3")
    assert throttle.peers.failures("10.0.0.3") == 0


def test_email_refusal_is_too_many_attempts_with_retry_info() -> None:
    throttle = SignInThrottle(peer_rate=1, peer_burst=9, failures_per_email=1, clock=Clock())
    with throttle.admit_peer("10.0.0.1") as attempt:
        throttle.admit_email(attempt, "a@b.cd")
        attempt.finish(Outcome.FAILURE)
    with pytest.raises(ResourceExhausted) as err, throttle.admit_peer("10.0.0.2") as attempt:
        throttle.admit_email(attempt, "a@b.cd")
    assert err.value.reason is Reason.TOO_MANY_ATTEMPTS
    assert err.value.retry_after == pytest.approx(1.0)


def test_an_unfinished_attempt_is_released_as_not_tried() -> None:
    throttle = SignInThrottle(peer_rate=1, peer_burst=9, failures_per_email=1, clock=Clock())
    with pytest.raises(RuntimeError), throttle.admit_peer("10.0.0.1") as attempt:
        throttle.admit_email(attempt, "a@b.cd")
        raise RuntimeError("database down")
    with throttle.admit_peer("10.0.0.1") as attempt:  # not blocked: nothing was tried
        throttle.admit_email(attempt, "a@b.cd")
        attempt.finish(Outcome.SUCCESS)
    assert throttle.emails.failures("a@b.cd") == 0


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:127.0.0.1:5555", "127.0.0.1"),
        ("ipv4:127.0.0.1:6666", "127.0.0.1"),
        ("ipv6:[::1]:443", "::/64"),
        ("ipv6:%5B::1%5D:443", "::/64"),
        ("ipv6:[2001:db8:1:2:aaaa::1]:1", "2001:db8:1:2::/64"),
        ("ipv6:[2001:db8:1:2:bbbb::9]:2", "2001:db8:1:2::/64"),
        ("ipv6:[::ffff:10.0.0.1]:1", "10.0.0.1"),
        ("ipv6:[fe80::1%eth0]:1", "fe80::/64"),
        ("unix:/tmp/socket", "unix"),
        ("", "unknown"),
        ("ipv4:not-an-ip:1", "unknown"),
        ("carrier-pigeon:1", "unknown"),
    ],
)
def test_peer_key_is_the_address_not_the_port(peer: str, key: str) -> None:
    assert peer_address(peer) == key


def test_admission_classes() -> None:
    assert classify("/grpc.health.v1.Health/Check") is CallClass.EXEMPT
    assert classify("/grpc.health.v1.Health/Watch") is CallClass.EXEMPT
    assert classify("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") is (
        CallClass.EXEMPT
    )
    for name in ("Login", "Register", "ChangePassword"):
        assert classify(f"/ticketing.v1.AuthService/{name}") is CallClass.PASSWORD
    assert classify("/ticketing.v1.AuthService/GetCurrentUser") is CallClass.GENERAL
    assert classify("/ticketing.v1.BookingService/BookSeats") is CallClass.GENERAL


def test_admission_limits_each_class_on_its_own_and_never_health() -> None:
    admission = Admission(general_limit=2, password_limit=1)
    book = "/ticketing.v1.BookingService/BookSeats"
    login = "/ticketing.v1.AuthService/Login"
    held = [admission.enter(book), admission.enter(book), admission.enter(login)]
    with pytest.raises(ResourceExhausted) as err:
        admission.enter(book)
    assert err.value.reason is Reason.OVERLOADED
    assert err.value.retry_after is not None
    with pytest.raises(ResourceExhausted):
        admission.enter(login)
    for _ in range(1000):
        admission.enter("/grpc.health.v1.Health/Check")  # never counted, never refused
    held[2].release()
    held[2].release()  # a second release is a no-op
    assert admission.in_flight(CallClass.PASSWORD) == 0
    admission.enter(login)
    assert admission.in_flight(CallClass.GENERAL) == 2


def test_partner_budgets_are_per_partner_and_overridable() -> None:
    """Issue 13: a partner's calls in flight and its rate are its own, on top of the shared
    budget; a refusal names the budget; counters go away when no call is in flight."""
    admission = Admission(
        general_limit=100,
        password_limit=1,
        partners=CallerBudgets(max_in_flight=2, rate=1_000_000.0, burst=1_000_000.0),
    )
    flooder, other = uuid.uuid4(), uuid.uuid4()
    held = [admission.enter_partner(flooder), admission.enter_partner(flooder)]
    with pytest.raises(ResourceExhausted) as err:
        admission.enter_partner(flooder)
    assert err.value.reason is Reason.PARTNER_BUDGET_EXCEEDED
    assert err.value.metadata["budget"] == "concurrency"
    assert err.value.retry_after is not None and err.value.retry_after > 0
    # Another partner is not affected, and one with its own larger budget gets it.
    admission.enter_partner(other).release()
    big = [admission.enter_partner(other, max_in_flight=5) for _ in range(5)]
    for call in (*held, *big):
        call.release()
    assert admission.in_flight(("partner", flooder)) == 0
    assert ("partner", flooder) not in admission._in_flight


def test_partner_rate_refuses_past_its_burst_with_retry_info() -> None:
    admission = Admission(
        general_limit=100,
        password_limit=1,
        partners=CallerBudgets(max_in_flight=1_000, rate=1.0, burst=3.0),
    )
    partner = uuid.uuid4()
    for _ in range(3):
        admission.enter_partner(partner).release()
    with pytest.raises(ResourceExhausted) as err:
        admission.enter_partner(partner)
    assert (err.value.reason, err.value.metadata["budget"]) == (
        Reason.PARTNER_BUDGET_EXCEEDED,
        "rate",
    )
    assert err.value.retry_after == pytest.approx(1.0)
    # A partner's own rate (and a burst scaled like the default's) replaces the default.
    fast = uuid.uuid4()
    for _ in range(300):
        admission.enter_partner(fast, rate=100.0).release()


def test_partner_streams_have_their_own_count_and_share_the_rate() -> None:
    """A partner's open streams are counted apart from its calls in flight (a full stream
    budget refuses no call, and full calls refuse no stream); each opening takes one token
    of the same rate as its calls; the counter goes away with the last stream."""
    admission = Admission(
        general_limit=100,
        password_limit=1,
        partners=CallerBudgets(max_in_flight=1, rate=1.0, burst=4.0, max_streams=2),
    )
    partner = uuid.uuid4()
    streams = [admission.enter_partner_stream(partner) for _ in range(2)]
    with pytest.raises(ResourceExhausted) as err:
        admission.enter_partner_stream(partner)
    assert err.value.metadata["budget"] == "streams"
    call = admission.enter_partner(partner)  # streams do not take the call's place
    for stream in streams:
        stream.release()
    assert admission.in_flight(("partner-streams", partner)) == 0
    # Three tokens are spent (two streams, one call): the fourth opening takes the last.
    admission.enter_partner_stream(partner).release()
    with pytest.raises(ResourceExhausted) as err:
        admission.enter_partner_stream(partner)
    assert err.value.metadata["budget"] == "rate"
    call.release()
