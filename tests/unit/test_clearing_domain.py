"""Domain rules of the clearing house (services/clearing/domain*.py): banks, transfers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.clearing.domain import (
    Directory,
    MemberBank,
    Transfer,
)
from services.clearing.domain_rules import (
    refusal_for,
)
from services.clearing.domain_terms import (
    BankStatus,
    InvalidRequest,
    ProtocolViolation,
    ReservationRefused,
    SettlementBlocked,
    TransferDecided,
    TransferPhase,
)

DEADLINE = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def admitted(limit: int = 100, bank_id: str = "alpha") -> MemberBank:
    """An admitted bank whose Admitted event is already collected, so only later events pend."""
    bank = MemberBank.admit(bank_id, bank_id.title(), limit)
    bank.collect_events()
    return bank


def bank_state(bank: MemberBank) -> tuple[Any, ...]:
    return (
        bank.status,
        bank.limit_minutes,
        bank.position_minutes,
        bank.reserved_minutes,
        dict(bank.reservations),
    )


def status_of(bank: MemberBank) -> BankStatus:
    """The bank's status, read afresh (so mypy does not keep an earlier narrowing of it)."""
    return bank.status


def requested(minutes: int = 30) -> Transfer:
    transfer = Transfer(
        transfer_id="t1",
        payer_bank="alpha",
        payer="maya",
        payee_bank="beta",
        payee="bob",
        minutes=minutes,
        memo="gardening",
        deadline=DEADLINE,
    )
    transfer.collect_events()
    return transfer


def decide(transfer: Transfer, how: str) -> None:
    if how == "commit":
        transfer.commit()
    else:
        transfer.abort("payee_refused")


# MemberBank: admission.


def test_admitted_bank_starts_active_with_nothing_owed_or_reserved() -> None:
    bank = MemberBank.admit("alpha", "Alpha", 250)
    assert bank_state(bank) == (BankStatus.ACTIVE, 250, 0, 0, {})
    assert bank.bank_id == "alpha"
    assert bank.name == "Alpha"
    assert [type(e) for e in bank.collect_events()] == [MemberBank.Admitted]


@pytest.mark.parametrize(
    ("name", "limit"),
    [
        ("", 100),
        ("   ", 100),
        ("x" * 201, 100),
        ("Alpha", -1),
        ("Alpha", 1.5),
        ("Alpha", "100"),
        ("Alpha", True),
    ],
    ids=["empty-name", "blank-name", "long-name", "negative", "float", "string", "bool"],
)
def test_admission_with_an_invalid_name_or_limit_is_refused(name: str, limit: Any) -> None:
    with pytest.raises(InvalidRequest):
        MemberBank.admit("alpha", name, limit)


def test_admission_accepts_the_edge_values_of_name_and_limit() -> None:
    bank = MemberBank.admit("alpha", "x" * 200, 0)
    assert (bank.name, bank.limit_minutes) == ("x" * 200, 0)


def test_bank_id_maps_to_the_same_aggregate_id_every_time() -> None:
    assert MemberBank.admit("alpha", "A", 1).id == MemberBank.admit("alpha", "B", 2).id
    assert MemberBank.admit("alpha", "A", 1).id != MemberBank.admit("beta", "A", 1).id


# MemberBank: reservations against the limit.


def test_reservations_may_use_the_limit_exactly() -> None:
    bank = admitted(limit=100)
    bank.reserve("t1", 60)
    bank.reserve("t2", 40)
    assert bank.reserved_minutes == 100
    assert bank.reservations == {"t1": 60, "t2": 40}
    assert bank.net_debit_after_reservations == 100
    assert [type(e) for e in bank.collect_events()] == [MemberBank.Reserved] * 2


def test_reservation_one_minute_past_the_limit_is_refused_and_records_nothing() -> None:
    bank = admitted(limit=100)
    bank.reserve("t1", 100)
    bank.collect_events()
    before = bank_state(bank)
    with pytest.raises(ReservationRefused) as refused:
        bank.reserve("t2", 1)
    assert refused.value.reason == "bank_limit_exceeded"
    assert refused.value.extra == {
        "position_minutes": 0,
        "reserved_minutes": 100,
        "limit_minutes": 100,
    }
    assert bank.collect_events() == []
    assert bank_state(bank) == before


def test_bank_with_zero_limit_cannot_reserve_a_single_minute() -> None:
    bank = admitted(limit=0)
    with pytest.raises(ReservationRefused, match="limit"):
        bank.reserve("t1", 1)


def test_creditor_bank_may_reserve_up_to_its_limit_plus_its_position() -> None:
    bank = admitted(limit=100)
    bank.credit("in", 50)
    bank.reserve("t1", 150)
    with pytest.raises(ReservationRefused) as refused:
        bank.reserve("t2", 1)
    assert refused.value.reason == "bank_limit_exceeded"


def test_creditor_bank_is_refused_one_minute_past_limit_plus_position() -> None:
    bank = admitted(limit=100)
    bank.credit("in", 50)
    with pytest.raises(ReservationRefused):
        bank.reserve("t1", 151)
    assert bank.reserved_minutes == 0


def test_debtor_bank_has_only_what_is_left_of_its_limit() -> None:
    bank = admitted(limit=100)
    bank.reserve("t1", 70)
    bank.debit("t1")
    with pytest.raises(ReservationRefused):
        bank.reserve("t2", 31)
    bank.reserve("t2", 30)
    assert bank.net_debit_after_reservations == 100


def test_suspended_bank_refuses_reservations_with_bank_suspended() -> None:
    bank = admitted(limit=100)
    bank.suspend()
    bank.collect_events()
    with pytest.raises(ReservationRefused) as refused:
        bank.reserve("t1", 1)
    assert refused.value.reason == "bank_suspended"
    assert bank.collect_events() == []
    assert bank.reserved_minutes == 0


def test_reinstated_bank_may_reserve_again() -> None:
    bank = admitted(limit=100)
    bank.suspend()
    bank.reinstate()
    bank.reserve("t1", 10)
    assert (bank.status, bank.reserved_minutes) == (BankStatus.ACTIVE, 10)


def test_suspending_or_reinstating_twice_records_one_event_each() -> None:
    bank = admitted()
    bank.suspend()
    bank.suspend()
    assert status_of(bank) == BankStatus.SUSPENDED
    bank.reinstate()
    bank.reinstate()
    assert status_of(bank) == BankStatus.ACTIVE
    assert [type(e) for e in bank.collect_events()] == [
        MemberBank.Suspended,
        MemberBank.Reinstated,
    ]


def test_the_same_transfer_cannot_be_reserved_twice() -> None:
    bank = admitted(limit=100)
    bank.reserve("t1", 10)
    with pytest.raises(ProtocolViolation):
        bank.reserve("t1", 10)
    assert bank.reserved_minutes == 10


# The refusal rule: what aborts a transfer before the payee's bank is asked.


def test_a_transfer_within_the_limit_between_active_banks_is_not_refused() -> None:
    assert refusal_for(admitted(100), admitted(0, "beta"), "beta", 100) is None


def suspended(bank: MemberBank) -> MemberBank:
    bank.suspend()
    return bank


@pytest.mark.parametrize(
    ("payer", "payee", "payee_bank_id", "minutes", "reason", "detail"),
    [
        (admitted(), admitted(), "alpha", 1, "invalid_transfer", "same bank"),
        (admitted(), None, "beta", 1, "unknown_bank", "beta is not a member"),
        (admitted(), suspended(admitted(bank_id="beta")), "beta", 1, "bank_suspended", "beta"),
        (suspended(admitted()), admitted(bank_id="beta"), "beta", 1, "bank_suspended", "alpha"),
        (admitted(100), admitted(bank_id="beta"), "beta", 101, "bank_limit_exceeded", "limit"),
    ],
    ids=["same-bank", "unknown-payee-bank", "payee-suspended", "payer-suspended", "limit"],
)
def test_refusal_for_names_the_first_rule_a_transfer_breaks(
    payer: MemberBank,
    payee: MemberBank | None,
    payee_bank_id: str,
    minutes: int,
    reason: str,
    detail: str,
) -> None:
    refusal = refusal_for(payer, payee, payee_bank_id, minutes)
    assert refusal is not None
    assert refusal.reason == reason
    assert detail in refusal.detail


def test_a_same_bank_transfer_is_refused_as_such_even_from_a_suspended_bank() -> None:
    refusal = refusal_for(suspended(admitted()), None, "alpha", 1)
    assert refusal is not None
    assert refusal.reason == "invalid_transfer"


# MemberBank: release, debit and credit.


def test_release_gives_the_reservation_back() -> None:
    bank = admitted(limit=100)
    bank.reserve("t1", 100)
    bank.release("t1")
    assert (bank.reserved_minutes, bank.reservations, bank.position_minutes) == (0, {}, 0)
    bank.reserve("t2", 100)


@pytest.mark.parametrize("step", ["release", "debit"])
def test_release_and_debit_need_an_existing_reservation(step: str) -> None:
    bank = admitted(limit=100)
    bank.reserve("t1", 10)
    bank.collect_events()
    before = bank_state(bank)
    with pytest.raises(ProtocolViolation, match="no reservation"):
        getattr(bank, step)("t2")
    assert bank_state(bank) == before
    assert bank.collect_events() == []


@pytest.mark.parametrize("step", ["release", "debit"])
def test_a_reservation_can_be_released_or_debited_only_once(step: str) -> None:
    bank = admitted(limit=100)
    bank.reserve("t1", 10)
    getattr(bank, step)("t1")
    with pytest.raises(ProtocolViolation):
        bank.release("t1")
    with pytest.raises(ProtocolViolation):
        bank.debit("t1")


def test_debit_turns_the_reservation_into_a_negative_position() -> None:
    bank = admitted(limit=100)
    bank.reserve("t1", 60)
    bank.reserve("t2", 15)
    bank.debit("t1")
    assert bank.position_minutes == -60
    assert bank.reserved_minutes == 15
    assert bank.reservations == {"t2": 15}
    assert bank.net_debit_after_reservations == 75


def test_credit_adds_to_the_position() -> None:
    bank = admitted(limit=0)
    bank.credit("t1", 45)
    bank.credit("t2", 5)
    assert (bank.position_minutes, bank.reserved_minutes) == (50, 0)


def test_bank_rebuilt_from_its_events_has_the_same_state() -> None:
    bank = MemberBank.admit("alpha", "Alpha", 100)
    bank.reserve("t1", 60)
    bank.reserve("t2", 30)
    bank.debit("t1")
    bank.release("t2")
    bank.credit("t3", 20)
    bank.suspend()
    copy = None
    for event in bank.collect_events():
        copy = event.mutate(copy)
    assert isinstance(copy, MemberBank)
    assert bank_state(copy) == bank_state(bank) == (BankStatus.SUSPENDED, 100, -40, 0, {})


# Transfer.


def test_requested_transfer_is_preparing_and_informs_nobody_yet() -> None:
    transfer = requested()
    assert transfer.status == TransferPhase.PREPARING
    assert not transfer.is_decided
    assert transfer.parties == ("alpha", "beta")
    assert (transfer.informed, transfer.acknowledged_by, transfer.reason) == ([], [], None)


def test_committed_transfer_informs_both_banks() -> None:
    transfer = requested()
    transfer.commit()
    assert transfer.status == TransferPhase.COMMITTED
    assert transfer.informed == ["alpha", "beta"]
    assert transfer.reason is None
    assert [type(e) for e in transfer.collect_events()] == [Transfer.Committed]


def test_abort_after_asking_the_payee_bank_informs_both_banks() -> None:
    transfer = requested()
    transfer.abort("payee_refused", "no such member")
    assert (transfer.status, transfer.reason, transfer.detail) == (
        TransferPhase.ABORTED,
        "payee_refused",
        "no such member",
    )
    assert transfer.informed == ["alpha", "beta"]


def test_abort_before_asking_the_payee_bank_informs_only_the_payer_bank() -> None:
    transfer = requested()
    transfer.abort("bank_limit_exceeded", payee_bank_asked=False)
    assert transfer.informed == ["alpha"]
    assert transfer.awaiting_acknowledgement == ["alpha"]


@pytest.mark.parametrize("first", ["commit", "abort"])
@pytest.mark.parametrize("second", ["commit", "abort"])
def test_a_transfer_is_decided_only_once(first: str, second: str) -> None:
    transfer = requested()
    decide(transfer, first)
    transfer.collect_events()
    decided = (transfer.status, transfer.reason, list(transfer.informed))
    with pytest.raises(TransferDecided):
        decide(transfer, second)
    assert (transfer.status, transfer.reason, transfer.informed) == decided
    assert transfer.collect_events() == []


def test_acknowledgement_before_a_decision_is_refused() -> None:
    transfer = requested()
    with pytest.raises(ProtocolViolation, match="no decision"):
        transfer.acknowledge("alpha")
    assert transfer.acknowledged_by == []
    assert transfer.collect_events() == []


def test_both_informed_banks_acknowledge_a_commit() -> None:
    transfer = requested()
    transfer.commit()
    transfer.acknowledge("beta")
    assert transfer.awaiting_acknowledgement == ["alpha"]
    transfer.acknowledge("alpha")
    assert transfer.acknowledged_by == ["beta", "alpha"]
    assert transfer.awaiting_acknowledgement == []


def test_acknowledging_twice_changes_nothing() -> None:
    transfer = requested()
    transfer.commit()
    transfer.acknowledge("alpha")
    transfer.collect_events()
    transfer.acknowledge("alpha")
    assert transfer.acknowledged_by == ["alpha"]
    assert transfer.collect_events() == []


@pytest.mark.parametrize(
    ("payee_bank_asked", "outsider"),
    [(True, "gamma"), (False, "gamma"), (False, "beta")],
    ids=["third-bank", "third-bank-early-abort", "payee-bank-never-asked"],
)
def test_only_informed_banks_may_acknowledge(payee_bank_asked: bool, outsider: str) -> None:
    transfer = requested()
    transfer.abort("unknown_bank", payee_bank_asked=payee_bank_asked)
    transfer.collect_events()
    with pytest.raises(ProtocolViolation, match="not told"):
        transfer.acknowledge(outsider)
    assert transfer.acknowledged_by == []
    assert transfer.collect_events() == []


def test_transfer_rebuilt_from_its_events_keeps_decision_and_acknowledgements() -> None:
    transfer = Transfer(
        transfer_id="t9",
        payer_bank="alpha",
        payer="maya",
        payee_bank="beta",
        payee="bob",
        minutes=5,
        memo="",
        deadline=DEADLINE,
    )
    transfer.abort("bank_suspended", "suspended", payee_bank_asked=False)
    transfer.acknowledge("alpha")
    copy = None
    for event in transfer.collect_events():
        copy = event.mutate(copy)
    assert isinstance(copy, Transfer)
    assert (copy.status, copy.reason, copy.informed, copy.acknowledged_by, copy.deadline) == (
        TransferPhase.ABORTED,
        "bank_suspended",
        ["alpha"],
        ["alpha"],
        DEADLINE,
    )


# Directory.


def test_directory_lists_banks_in_order_of_admission() -> None:
    directory = Directory()
    for bank_id in ("beta", "alpha", "gamma"):
        directory.list_bank(bank_id)
    assert directory.bank_ids == ["beta", "alpha", "gamma"]


def test_directory_refuses_a_duplicate_bank_and_records_nothing() -> None:
    directory = Directory()
    directory.list_bank("alpha")
    directory.collect_events()
    with pytest.raises(InvalidRequest, match="already"):
        directory.list_bank("alpha")
    assert directory.bank_ids == ["alpha"]
    assert directory.collect_events() == []


def test_there_is_only_one_directory() -> None:
    assert Directory().id == Directory().id


def test_credit_an_open_settlement_will_pay_out_cannot_be_spent_meanwhile() -> None:
    bank = admitted(limit=50)
    bank.credit("t1", 100)
    bank.expect_settlement(1, 100)

    with pytest.raises(ReservationRefused, match="limit"):
        bank.reserve("t2", 51)
    bank.reserve("t3", 50)
    bank.debit("t3")
    bank.settle(1, -100)

    assert bank.position_minutes == -50
    assert bank.settling_minutes == 0
    assert bank.net_debit_after_reservations == 50  # exactly its limit, never past it


def test_a_cycle_cannot_count_on_credit_that_transfers_in_flight_may_spend() -> None:
    bank = admitted(limit=50)
    bank.credit("t1", 100)
    bank.reserve("t2", 120)  # within the limit while the 100 is the bank's
    bank.collect_events()

    with pytest.raises(SettlementBlocked, match="reserved for transfers not yet decided"):
        bank.expect_settlement(1, 100)
    assert bank.collect_events() == []
    assert bank.settling_minutes == 0


# Key rotation.


def test_a_rotated_key_signs_what_comes_after_its_predecessors_last_message() -> None:
    bank = MemberBank.admit("alpha", "Alpha", 100, public_key="k1")
    assert bank.keys_for(1) == ["k1"]
    bank.rotate_key("k2", previous_key_until_seq=5)
    # Up to 5: the old key, or the new one (queued before, published after the rotation).
    assert bank.keys_for(5) == ["k1", "k2"]
    assert bank.keys_for(6) == ["k2"]
    bank.rotate_key("k3", previous_key_until_seq=9)
    assert bank.keys_for(3) == ["k1", "k2", "k3"]
    assert bank.keys_for(7) == ["k2", "k3"]
    assert bank.keys_for(10) == ["k3"]
    assert bank.keys_held == ["k1", "k2", "k3"]
    assert bank.public_key == "k3"
    replayed = MemberBank.admit("alpha", "Alpha", 100, public_key="k1")
    for event in bank.collect_events()[1:]:
        event.mutate(replayed)
    assert replayed.keys_for(7) == ["k2", "k3"]


def test_a_rotation_that_would_rewrite_history_or_change_nothing_is_refused() -> None:
    bank = MemberBank.admit("alpha", "Alpha", 100, public_key="k1")
    bank.rotate_key("k2", previous_key_until_seq=5)
    with pytest.raises(InvalidRequest, match="cannot come before 5"):
        bank.rotate_key("k3", previous_key_until_seq=4)
    with pytest.raises(InvalidRequest, match="the key the bank has now"):
        bank.rotate_key("k2", previous_key_until_seq=8)
    with pytest.raises(InvalidRequest, match="no key to rotate"):
        MemberBank.admit("beta", "Beta", 100).rotate_key("k1", previous_key_until_seq=0)
    assert bank.keys_held == ["k1", "k2"]
