"""Pure gate and event-window rules: scan limits, who may act at the gates, UpdateEvent input."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from ticketd.auth.principal import Principal, Role
from ticketd.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Reason,
    ResourceExhausted,
)
from ticketd.events.rules import (
    EventRecord,
    EventStatus,
    EventTimesUpdate,
    check_can_be_staff,
    check_can_update,
    event_time_violations,
    resolve_update_mask,
)
from ticketd.gate.limits import ScanLimiter
from ticketd.gate.rules import check_may_read, check_may_scan, scan_id_mismatch

EVENT = uuid.uuid4()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **overrides: float) -> ScanLimiter:
    args: dict[str, float] = {
        "gate_rate": 100,
        "gate_burst": 200,
        "caller_rate": 10,
        "caller_burst": 20,
        "max_gates": 3,
    }
    args.update(overrides)
    return ScanLimiter(
        gate_rate=args["gate_rate"],
        gate_burst=args["gate_burst"],
        caller_rate=args["caller_rate"],
        caller_burst=args["caller_burst"],
        max_gates=int(args["max_gates"]),
        clock=clock,
    )


def refused(lim: ScanLimiter, caller: uuid.UUID, gate: str) -> ResourceExhausted | None:
    try:
        lim.admit(caller, EVENT, gate)
    except ResourceExhausted as exc:
        return exc
    return None


def test_a_caller_bucket_holds_across_gate_names() -> None:
    clock = Clock()
    lim = limiter(clock, max_gates=1_000)
    caller = uuid.uuid4()
    outcomes = [refused(lim, caller, f"g{i}") for i in range(30)]
    assert sum(o is None for o in outcomes) == 20  # the caller's burst
    errors = [o for o in outcomes if o is not None]
    assert {(e.reason, e.metadata["limit"]) for e in errors} == {
        (Reason.SCAN_RATE_EXCEEDED, "caller")
    }
    assert all(e.retry_after == pytest.approx(0.1) for e in errors)
    clock.now += 1.0  # 10 tokens back
    assert sum(refused(lim, caller, f"g{i}") is None for i in range(15)) == 10
    # Another caller has its own bucket.
    assert refused(lim, uuid.uuid4(), "g0") is None


def test_gate_names_per_caller_are_bounded_until_they_go_cold() -> None:
    clock = Clock()
    lim = limiter(clock)  # a gate bucket refills from empty in 200/100 = 2 s
    caller = uuid.uuid4()
    for gate in ("a", "b", "c"):
        assert refused(lim, caller, gate) is None
    too_many = refused(lim, caller, "d")
    assert too_many is not None and too_many.reason is Reason.TOO_MANY_GATES
    assert too_many.metadata == {"max": "3"}
    assert too_many.retry_after == pytest.approx(2.0)
    assert refused(lim, caller, "a") is None  # a warm gate is still fine
    assert lim.warm_gate_count(caller) == 3
    clock.now += 1.5
    assert refused(lim, caller, "a") is None  # keeps "a" warm; "b" and "c" age
    clock.now += 0.6  # b and c idle 2.1 s: cold, forgotten
    assert lim.warm_gate_count(caller) == 1
    assert refused(lim, caller, "d") is None and refused(lim, caller, "e") is None
    assert refused(lim, caller, "f") is not None
    # Other callers have their own bound.
    assert refused(lim, uuid.uuid4(), "z") is None


def test_a_refusal_by_an_earlier_bound_spends_nothing_of_a_later_one() -> None:
    clock = Clock()
    lim = limiter(clock, caller_burst=5, max_gates=1)
    caller = uuid.uuid4()
    assert refused(lim, caller, "a") is None
    for _ in range(10):  # TOO_MANY_GATES: no caller token is spent
        error = refused(lim, caller, "b")
        assert error is not None and error.reason is Reason.TOO_MANY_GATES
    assert sum(refused(lim, caller, "a") is None for _ in range(10)) == 4


def test_the_gate_bucket_is_shared_and_a_gate_refusal_costs_the_caller() -> None:
    clock = Clock()
    lim = limiter(clock, gate_rate=1, gate_burst=2, caller_burst=3)
    one, two = uuid.uuid4(), uuid.uuid4()
    assert refused(lim, one, "g") is None and refused(lim, two, "g") is None
    error = refused(lim, one, "g")
    assert error is not None and error.metadata["limit"] == "gate"
    assert error.retry_after == pytest.approx(1.0)
    assert refused(lim, one, "other") is None  # one's third and last token
    error = refused(lim, one, "other2")
    assert error is not None and error.metadata["limit"] == "caller"


def principal(*roles: Role) -> Principal:
    return Principal(uuid.uuid4(), "x@example.test", frozenset(roles))


def test_who_may_scan() -> None:
    check_may_scan(principal(Role.ADMIN), is_staff=False)
    check_may_scan(principal(Role.ENTRY_MANAGER), is_staff=True)
    for who, staff in ((principal(Role.ENTRY_MANAGER), False), (principal(Role.ORGANIZER), True)):
        with pytest.raises(PermissionDenied) as err:
            check_may_scan(who, is_staff=staff)
        assert err.value.reason is Reason.NOT_EVENT_STAFF


def test_who_may_read_the_gates() -> None:
    owner = principal(Role.ORGANIZER)
    check_may_read(owner, owner.user_id, is_staff=False)
    for who in (principal(Role.ADMIN), principal(Role.SUPPORT)):
        check_may_read(who, uuid.uuid4(), is_staff=False)
    check_may_read(principal(Role.ENTRY_MANAGER), uuid.uuid4(), is_staff=True)
    # Two roles: the one that qualifies is enough.
    both = principal(Role.ORGANIZER, Role.ENTRY_MANAGER)
    check_may_read(both, uuid.uuid4(), is_staff=True)
    cases = [
        (principal(Role.ENTRY_MANAGER), Reason.NOT_EVENT_STAFF),
        (principal(Role.ORGANIZER), Reason.NOT_EVENT_OWNER),
        (principal(Role.CUSTOMER), Reason.NOT_EVENT_OWNER),
    ]
    for who, reason in cases:
        with pytest.raises(PermissionDenied) as err:
            check_may_read(who, uuid.uuid4(), is_staff=False)
        assert err.value.reason is reason


def test_scan_id_mismatch_is_invalid_argument_naming_the_field() -> None:
    scan_id = uuid.uuid4()
    error = scan_id_mismatch(scan_id)
    assert isinstance(error, InvalidArgument) and error.reason is Reason.SCAN_ID_MISMATCH
    assert [v.field for v in error.violations] == ["scan_id"]
    assert error.metadata == {"scan_id": str(scan_id)}


def test_update_mask_resolution() -> None:
    assert resolve_update_mask([], {"end_time"}) == {"end_time"}
    assert resolve_update_mask(["*"], set()) == {"doors_open_time", "end_time"}
    assert resolve_update_mask(["doors_open_time"], {"end_time"}) == {"doors_open_time"}
    with pytest.raises(InvalidArgument) as err:
        resolve_update_mask([], set())
    assert [v.field for v in err.value.violations] == ["update_mask"]
    with pytest.raises(InvalidArgument) as err:
        resolve_update_mask(["end_time", "name", "start_time"], set())
    assert [v.field for v in err.value.violations] == [
        "update_mask.paths[1]",
        "update_mask.paths[2]",
    ]


START = dt.datetime(2031, 1, 1, 20, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)


def test_event_times_are_checked_as_at_creation() -> None:
    assert event_time_violations(START, START - SECOND, START + SECOND) == []
    assert event_time_violations(START, None, None) == []
    bad = event_time_violations(START, START, START, prefix="event.")
    assert [v.field for v in bad] == ["event.end_time", "event.doors_open_time"]


def event(status: EventStatus = EventStatus.ON_SALE) -> EventRecord:
    return EventRecord(
        id=uuid.uuid4(),
        venue_id=uuid.uuid4(),
        venue_name="Hall",
        time_zone="UTC",
        organizer_id=uuid.uuid4(),
        name="Show",
        description="",
        start_time=START,
        end_time=START + dt.timedelta(hours=2),
        currency_code="EUR",
        max_tickets_per_order=4,
        max_tickets_per_customer=None,
        capacity=10,
        status=status,
        cancel_reason=None,
        cancel_time=None,
        create_time=START - dt.timedelta(days=9),
        doors_open_time=START - dt.timedelta(hours=1),
    )


def test_an_update_changes_only_the_named_fields_and_clears_unset_ones() -> None:
    e = event()
    later = START + dt.timedelta(hours=3)
    assert EventTimesUpdate(frozenset({"end_time"}), end_time=later).applied_to(e) == (
        e.doors_open_time,
        later,
    )
    assert EventTimesUpdate(frozenset({"doors_open_time", "end_time"})).applied_to(e) == (
        None,
        None,
    )


def test_updates_are_refused_once_cancelled_or_over() -> None:
    check_can_update(event(), "OPEN")
    check_can_update(event(EventStatus.STARTED), "OPEN")
    for e, state, reason in (
        (event(EventStatus.CANCELLED), "EVENT_CANCELLED", Reason.EVENT_CANCELLED),
        (event(EventStatus.STARTED), "EVENT_OVER", Reason.EVENT_OVER),
    ):
        with pytest.raises(FailedPrecondition) as err:
            check_can_update(e, state)
        assert err.value.reason is reason


def test_only_entry_managers_can_be_staff() -> None:
    check_can_be_staff(uuid.uuid4(), (Role.CUSTOMER, Role.ENTRY_MANAGER))
    with pytest.raises(FailedPrecondition) as err:
        check_can_be_staff(uuid.uuid4(), (Role.CUSTOMER, Role.ORGANIZER))
    assert err.value.reason is Reason.NOT_ENTRY_MANAGER


def test_gate_settings_from_the_environment() -> None:
    from ticketd.config import ConfigError, Settings

    defaults = Settings.from_env({})
    assert (defaults.caller_scan_rate, defaults.caller_scan_burst, defaults.caller_max_gates) == (
        400,
        800,
        32,
    )
    assert (defaults.doors_open_lead_seconds, defaults.default_event_duration_seconds) == (
        10_800,
        14_400,
    )
    given = Settings.from_env(
        {
            "TICKETING_CALLER_SCAN_RATE": "50",
            "TICKETING_CALLER_SCAN_BURST": "60",
            "TICKETING_CALLER_MAX_GATES": "4",
            "TICKETING_DOORS_OPEN_LEAD": "0",
            "TICKETING_DEFAULT_EVENT_DURATION": "3600",
        }
    )
    assert (given.caller_scan_rate, given.caller_scan_burst, given.caller_max_gates) == (50, 60, 4)
    assert (given.doors_open_lead_seconds, given.default_event_duration_seconds) == (0, 3600)
    for name, bad in (
        ("TICKETING_CALLER_SCAN_RATE", "0"),
        ("TICKETING_CALLER_MAX_GATES", "many"),
        ("TICKETING_DEFAULT_EVENT_DURATION", "59"),
        ("TICKETING_DOORS_OPEN_LEAD", "-1"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: bad})
