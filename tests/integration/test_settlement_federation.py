"""Settlement cycles across a whole federation (a Clearing and one Ledger per bank, each on its
own real store) linked by an in-process pump: positions at the cut-off, creditors confirming,
each bank posting the settlement once, restarts mid-cycle, and invariants 1-5 throughout."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from eventsourcing.application import Application

from services.clearing.application import Clearing
from services.clearing.domain import (
    MemberBank,
)
from services.clearing.domain_terms import (
    bank_id_to_uuid,
)
from services.clearing.settlement import (
    CycleStatus,
    NotCreditor,
    ObligationStatus,
    SettlementCycle,
    SettlementOpen,
    UnknownObligation,
    UnknownSettlement,
    settlement_uuid,
)
from services.clearing.views import SettlementView
from services.common.inbox import Outcome, Received
from services.common.outbox import QUEUED_TOPIC, envelope_of
from services.common.stores import parse_store_url
from services.ledger.application import (
    Ledger,
)
from shared.protocol import CLEARING, Envelope, SettlementCompleted
from tests.helpers import Clock, admit, confirm

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MEMBERS = ("ann", "ben")
OVERDRAFT = 5_000
BANK_LIMIT = 50_000
BANKS = ("gp", "college", "library", "surgery", "school")


class Pump:
    """What the outbox relays and consumers do, in-process: reads every application's queued
    envelopes in log order and hands them to the destination's receive(). A new Pump starts
    from the beginning of every log, as a relay that lost its position would, so everything
    delivered before comes again and must be recognised as a duplicate."""

    def __init__(self, apps: dict[str, Clearing | Ledger]) -> None:
        self.apps = apps
        self._read = dict.fromkeys(apps, 0)
        self.received: dict[str, list[Received]] = {name: [] for name in apps}

    def collect(self) -> dict[str, list[Envelope]]:
        out: dict[str, list[Envelope]] = {name: [] for name in self.apps}
        for name, app in self.apps.items():
            for _ in range(1_000):
                batch = app.recorder.select_notifications(
                    start=self._read[name] + 1, limit=500, topics=[QUEUED_TOPIC]
                )
                if not batch:
                    break
                self._read[name] = batch[-1].id
                for notification in batch:
                    envelope = envelope_of(app.mapper.to_domain_event(notification))  # type: ignore[arg-type]
                    out[envelope.destination].append(envelope)
        return out

    def step(self) -> int:
        """Publish what was queued since the last step, and deliver it; returns how many."""
        moved = 0
        for destination, envelopes in self.collect().items():
            if envelopes:
                results = self.apps[destination].receive(envelopes)
                self.received[destination] += results
                moved += len(envelopes)
        return moved

    def run(self, max_rounds: int = 200) -> None:
        for _ in range(max_rounds):
            if not self.step():
                self.assert_clean()
                return
        raise AssertionError(f"the federation did not go quiet in {max_rounds} rounds")

    def outcomes(self) -> Counter[Outcome]:
        return Counter(r.outcome for results in self.received.values() for r in results)

    def assert_clean(self) -> None:
        bad = [r for results in self.received.values() for r in results if r.outcome is Outcome.GAP]
        bad += [
            r
            for results in self.received.values()
            for r in results
            if r.outcome is Outcome.REJECTED
        ]
        assert not bad, bad


@dataclass
class Federation:
    clearing: Clearing
    banks: dict[str, Ledger]
    clock: Clock
    pump: Pump = field(init=False)
    committed: list[tuple[str, str, str, str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        apps: dict[str, Clearing | Ledger] = {CLEARING: self.clearing, **self.banks}
        self.pump = Pump(apps)

    def positions(self) -> dict[str, int]:
        return self.clearing.positions()

    def transfer(self, rng: random.Random, pump: bool = True) -> str:
        """One random transfer between two banks' members; pumped to its decision unless not."""
        payer_bank, payee_bank = rng.sample(sorted(self.banks), 2)
        payer, payee = rng.choice(MEMBERS), rng.choice(MEMBERS)
        minutes = rng.randint(1, 240)
        receipt = self.banks[payer_bank].request_transfer(payer, payee_bank, payee, minutes, "")
        transfer_id = receipt.value.transfer_id
        self.committed.append((transfer_id, payer_bank, payer, payee_bank, payee, minutes))
        if pump:
            self.pump.run()
            assert self.clearing.get_transfer(transfer_id).status == "committed"
        return transfer_id

    def confirm_all(self, view: SettlementView, numbers: list[int] | None = None) -> SettlementView:
        for o in view.obligations:
            if numbers is None or o.number in numbers:
                self.clock.advance(minutes=1)
                view = confirm(self.clearing, view.settlement_id, o.number, o.creditor)
        return view


FederationFactory = Callable[..., Federation]


@pytest.fixture
def open_federation(new_store_url: Callable[[str], str]) -> Iterator[FederationFactory]:
    """Open a clearing house and a ledger per bank on their stores. The first time, admit the
    banks, open their members and deliver the directory; again on the same stores, it is a
    restart. Every application is closed after the test."""
    opened: list[Application[Any]] = []

    def factory(
        bank_ids: tuple[str, ...],
        clock: Clock | None = None,
        limits: dict[str, int] | None = None,
    ) -> Federation:
        clock = clock or Clock(START)
        clearing = Clearing(parse_store_url(new_store_url(CLEARING)), clock=clock)
        opened.append(clearing)
        banks = {b: Ledger(b, parse_store_url(new_store_url(b))) for b in bank_ids}
        opened.extend(banks.values())
        fed = Federation(clearing, banks, clock)
        if not clearing.banks():
            for bank_id in bank_ids:
                limit = (limits or {}).get(bank_id, BANK_LIMIT)
                admit(clearing, bank_id, limit)
                for member_id in MEMBERS:
                    banks[bank_id].open_member(member_id, member_id.title(), "person", OVERDRAFT)
            fed.pump.run()
        return fed

    yield factory
    for app in opened:
        app.close()


def close(fed: Federation) -> None:
    for app in (fed.clearing, *fed.banks.values()):
        app.close()


# Reading the books.


def balance(ledger: Ledger, member_id: str) -> int:
    return ledger.get_member(member_id).balance_minutes


def entries_named(ledger: Ledger, member_id: str, entry_id: str) -> list[int]:
    """The minutes of each statement entry with this id on the account."""
    return [e.minutes for e in ledger.statement(member_id).entries if e.entry_id == entry_id]


def events_of(app: Application[Any], aggregate_id: Any, kind: type[Any]) -> list[Any]:
    return [e for e in app.events.get(aggregate_id) if isinstance(e, kind)]


def settlement_messages(clearing: Clearing) -> list[Envelope]:
    """Every SettlementCompleted the clearing house has queued, oldest first."""
    found = []
    start = 1
    for _ in range(1_000):
        batch = clearing.recorder.select_notifications(
            start=start, limit=500, topics=[QUEUED_TOPIC]
        )
        if not batch:
            break
        for notification in batch:
            envelope = envelope_of(clearing.mapper.to_domain_event(notification))  # type: ignore[arg-type]
            if isinstance(envelope.message, SettlementCompleted):
                found.append(envelope)
        start = batch[-1].id + 1
    return found


def queued_count(app: Application[Any]) -> int:
    return len(app.recorder.select_notifications(start=1, limit=100_000, topics=[QUEUED_TOPIC]))


def assert_invariants(fed: Federation) -> None:
    """Invariants 1, 2, 3 and 5 once every message is applied; 4 for every transfer made."""
    positions = fed.positions()
    assert sum(positions.values()) == 0  # 3
    for bank in fed.clearing.banks():
        assert bank.reserved_minutes == 0, bank
        assert bank.reserved_minutes - bank.position_minutes <= bank.limit_minutes, bank  # 5
    for bank_id, ledger in fed.banks.items():
        assert ledger.summary().total_posted_minutes == 0, bank_id  # 1
        assert balance(ledger, "federation") == -positions[bank_id], bank_id  # 2
        for member_id in (*MEMBERS, "federation", "settlement"):
            member = ledger.get_member(member_id)
            assert member.held_minutes == 0, (bank_id, member)
            if member_id in MEMBERS:
                assert member.available_minutes >= -OVERDRAFT, (bank_id, member)  # 5
    assert_each_transfer_posted_once(fed)


def assert_each_transfer_posted_once(fed: Federation) -> None:
    """Invariant 4: a committed transfer posted once at the payer, the payee and the clearing."""
    debited = {
        b: Counter(
            e.transfer_id for e in events_of(fed.clearing, bank_id_to_uuid(b), MemberBank.Debited)
        )
        for b in fed.banks
    }
    credited = {
        b: Counter(
            e.transfer_id for e in events_of(fed.clearing, bank_id_to_uuid(b), MemberBank.Credited)
        )
        for b in fed.banks
    }
    for transfer_id, payer_bank, payer, payee_bank, payee, minutes in fed.committed:
        assert fed.clearing.get_transfer(transfer_id).status == "committed"
        assert entries_named(fed.banks[payer_bank], payer, transfer_id) == [-minutes]
        assert entries_named(fed.banks[payee_bank], payee, transfer_id) == [minutes]
        assert debited[payer_bank][transfer_id] == 1
        assert credited[payee_bank][transfer_id] == 1


def assert_settled_once(fed: Federation, view: SettlementView) -> None:
    """Each bank with something to settle has its position moved once at the clearing house,
    was told once, and posted once: federation by its cut-off position, settlement opposite."""
    entry_id = f"settlement-{view.settlement_id}"
    messages = Counter(
        e.destination
        for e in settlement_messages(fed.clearing)
        if isinstance(e.message, SettlementCompleted)
        and e.message.settlement_id == view.settlement_id
    )
    for bank_id, ledger in fed.banks.items():
        cut_off = view.positions[bank_id]
        settled = events_of(fed.clearing, bank_id_to_uuid(bank_id), MemberBank.Settled)
        mine = [e for e in settled if e.settlement_id == view.settlement_id]
        if cut_off == 0:
            assert mine == [], bank_id
            assert entries_named(ledger, "federation", entry_id) == []
            continue
        assert [e.minutes for e in mine] == [-cut_off], bank_id
        assert messages[bank_id] == 1, bank_id
        assert entries_named(ledger, "federation", entry_id) == [cut_off], bank_id
        assert entries_named(ledger, "settlement", entry_id) == [-cut_off], bank_id
    completed = events_of(
        fed.clearing, settlement_uuid(view.settlement_id), SettlementCycle.Completed
    )
    assert len(completed) == 1


def assert_told_what_each_paid_and_received(fed: Federation, view: SettlementView) -> None:
    paid: Counter[str] = Counter()
    received: Counter[str] = Counter()
    for o in view.obligations:
        paid[o.debtor] += o.minutes
        received[o.creditor] += o.minutes
    told = {
        e.destination: e.message
        for e in settlement_messages(fed.clearing)
        if isinstance(e.message, SettlementCompleted)
        and e.message.settlement_id == view.settlement_id
    }
    expected = {
        bank_id: SettlementCompleted(
            settlement_id=view.settlement_id,
            paid_minutes=paid[bank_id],
            received_minutes=received[bank_id],
        )
        for bank_id in fed.banks
        if view.positions[bank_id] != 0
    }
    assert told == expected


def assert_plan_squares_cut_off(view: SettlementView) -> None:
    after = dict(view.positions)
    for o in view.obligations:
        assert o.minutes > 0
        assert view.positions[o.debtor] < 0 < view.positions[o.creditor], o
        after[o.debtor] += o.minutes
        after[o.creditor] -= o.minutes
    assert set(after.values()) <= {0}
    nonzero = sum(1 for p in view.positions.values() if p)
    assert len(view.obligations) <= max(nonzero - 1, 0)


# A whole cycle.


@pytest.mark.parametrize("bank_count", [2, 3, 5])
def test_a_cycle_after_random_transfers_settles_every_position_to_zero_once(
    open_federation: FederationFactory, bank_count: int
) -> None:
    fed = open_federation(BANKS[:bank_count])
    rng = random.Random(1000 + bank_count)
    for _ in range(6 * bank_count):
        fed.transfer(rng)
    assert_invariants(fed)
    before = fed.positions()
    assert any(before.values())
    federation_before = {b: balance(ledger, "federation") for b, ledger in fed.banks.items()}
    settlement_before = {b: balance(ledger, "settlement") for b, ledger in fed.banks.items()}
    assert set(settlement_before.values()) == {0}

    fed.clock.advance(minutes=60)
    cut_off_at = fed.clock.now
    view = fed.clearing.open_settlement()
    assert (view.settlement_id, view.status, view.cut_off_at) == (1, CycleStatus.OPEN, cut_off_at)
    assert view.completed_at is None
    assert view.positions == before
    assert_plan_squares_cut_off(view)
    assert view.obligations
    assert [o.number for o in view.obligations] == list(range(1, len(view.obligations) + 1))
    assert {o.status for o in view.obligations} == {ObligationStatus.PENDING}
    assert all(o.confirmed_at is None for o in view.obligations)
    # Opening moves nothing: positions move only once every receipt is confirmed.
    assert fed.positions() == before
    assert settlement_messages(fed.clearing) == []

    for o in view.obligations[:-1]:
        fed.clock.advance(minutes=1)
        view = confirm(fed.clearing, 1, o.number, o.creditor)
        assert view.status == CycleStatus.OPEN
        assert view.obligations[o.number - 1].status == ObligationStatus.CONFIRMED
        assert view.obligations[o.number - 1].confirmed_at == fed.clock.now
        fed.pump.run()
        assert fed.positions() == before
    last = view.obligations[-1]
    fed.clock.advance(minutes=1)
    view = confirm(fed.clearing, 1, last.number, last.creditor)
    assert (view.status, view.completed_at) == (CycleStatus.COMPLETED, fed.clock.now)
    assert {o.status for o in view.obligations} == {ObligationStatus.CONFIRMED}
    assert set(fed.positions().values()) == {0}
    fed.pump.run()

    assert fed.clearing.get_settlement(1) == view
    assert fed.clearing.settlements() == [view]
    for bank_id, ledger in fed.banks.items():
        assert balance(ledger, "federation") == 0 == -fed.positions()[bank_id]
        moved_federation = balance(ledger, "federation") - federation_before[bank_id]
        moved_settlement = balance(ledger, "settlement") - settlement_before[bank_id]
        assert moved_federation == -moved_settlement == before[bank_id]
    assert_invariants(fed)
    assert_settled_once(fed, view)
    assert_told_what_each_paid_and_received(fed, view)


def test_transfers_committed_after_the_cut_off_belong_to_the_next_cycle(
    open_federation: FederationFactory,
) -> None:
    fed = open_federation(BANKS[:3])
    rng = random.Random(7)
    for _ in range(12):
        fed.transfer(rng)
    before = fed.positions()
    # One transfer already reserved at the clearing house but not yet decided at the cut-off.
    in_flight = fed.banks["gp"].request_transfer("ann", "college", "ben", 45, "late").value
    fed.pump.step()
    assert fed.clearing.get_transfer(in_flight.transfer_id).status == "preparing"
    view = fed.clearing.open_settlement()
    assert view.positions == before
    fed.pump.run()
    fed.committed.append((in_flight.transfer_id, "gp", "ann", "college", "ben", 45))
    assert fed.clearing.get_transfer(in_flight.transfer_id).status == "committed"
    for _ in range(5):  # committed while the cycle is open
        fed.transfer(rng)
    later = {b: p - before[b] for b, p in fed.positions().items()}
    assert any(later.values())
    assert fed.clearing.get_settlement(view.settlement_id).positions == before

    view = fed.confirm_all(view)
    assert view.status == CycleStatus.COMPLETED
    fed.pump.run()
    # The cycle settled exactly its cut-off positions: what came later is still owed.
    assert fed.positions() == later
    assert_invariants(fed)
    assert_settled_once(fed, view)
    for bank_id, ledger in fed.banks.items():
        assert balance(ledger, "settlement") == -before[bank_id]

    # The next cycle settles what came after the first one's cut-off.
    fed.clock.advance(minutes=60)
    second = fed.clearing.open_settlement()
    assert (second.settlement_id, second.positions) == (2, later)
    second = fed.confirm_all(second)
    fed.pump.run()
    assert set(fed.positions().values()) == {0}
    assert [s.settlement_id for s in fed.clearing.settlements()] == [1, 2]
    assert_invariants(fed)
    assert_settled_once(fed, second)
    for bank_id, ledger in fed.banks.items():
        assert balance(ledger, "settlement") == -before[bank_id] - later[bank_id]


def test_a_cycle_survives_a_restart_of_every_application_mid_cycle_and_settles_once(
    open_federation: FederationFactory,
) -> None:
    clock = Clock(START)
    fed = open_federation(BANKS, clock)
    rng = random.Random(5)
    for _ in range(25):
        fed.transfer(rng)
    before = fed.positions()
    view = fed.clearing.open_settlement()
    assert len(view.obligations) >= 3
    half = [o.number for o in view.obligations[: len(view.obligations) // 2]]
    view = fed.confirm_all(view, half)
    fed.pump.run()
    close(fed)

    fed = open_federation(BANKS, clock)
    view = fed.clearing.get_settlement(1)
    assert view.status == CycleStatus.OPEN
    assert [o.number for o in view.obligations if o.status == ObligationStatus.CONFIRMED] == half
    assert fed.positions() == before
    with pytest.raises(SettlementOpen):
        fed.clearing.open_settlement()
    # The new pump publishes every log from its start again: all of it is a duplicate.
    fed.pump.run()
    assert set(fed.pump.outcomes()) == {Outcome.DUPLICATE}
    # Confirming again what was confirmed before the restart changes nothing.
    again = confirm(fed.clearing, 1, half[0], view.obligations[half[0] - 1].creditor)
    assert again == view
    rest = [o.number for o in view.obligations if o.number not in half]
    view = fed.confirm_all(view, rest)
    assert view.status == CycleStatus.COMPLETED
    fed.pump.run()
    assert set(fed.positions().values()) == {0}
    assert_invariants(fed)
    assert_settled_once(fed, view)


def test_a_cycle_completed_just_before_a_restart_is_posted_once_after_it(
    open_federation: FederationFactory,
) -> None:
    clock = Clock(START)
    fed = open_federation(BANKS[:3], clock)
    rng = random.Random(11)
    for _ in range(10):
        fed.transfer(rng)
    view = fed.confirm_all(fed.clearing.open_settlement())
    assert view.status == CycleStatus.COMPLETED
    # The decision is saved with its messages; nothing has reached the banks yet.
    told = len(settlement_messages(fed.clearing))
    assert told == sum(1 for p in view.positions.values() if p)
    close(fed)

    fed = open_federation(BANKS[:3], clock)
    fed.pump.run()
    close(fed)
    fed = open_federation(BANKS[:3], clock)
    fed.pump.run()
    assert Outcome.APPLIED not in fed.pump.outcomes()
    assert len(settlement_messages(fed.clearing)) == told
    assert_invariants(fed)
    assert_settled_once(fed, view)
    for bank_id, ledger in fed.banks.items():
        assert balance(ledger, "settlement") == -view.positions[bank_id]


def test_a_cycle_whose_debts_net_out_completes_at_once_and_sends_nothing(
    open_federation: FederationFactory,
) -> None:
    fed = open_federation(BANKS[:3])
    # gp owes college, college owes library, library owes gp: the same 60 minutes each.
    for payer_bank, payee_bank in (("gp", "college"), ("college", "library"), ("library", "gp")):
        transfer_id = fed.banks[payer_bank].request_transfer("ann", payee_bank, "ben", 60, "").value
        fed.committed.append((transfer_id.transfer_id, payer_bank, "ann", payee_bank, "ben", 60))
        fed.pump.run()
    assert fed.positions() == {"gp": 0, "college": 0, "library": 0}
    queued_before = queued_count(fed.clearing)

    view = fed.clearing.open_settlement()
    assert (view.status, view.obligations, view.completed_at) == (
        CycleStatus.COMPLETED,
        [],
        fed.clock.now,
    )
    assert view.positions == {"gp": 0, "college": 0, "library": 0}
    assert queued_count(fed.clearing) == queued_before
    assert fed.pump.step() == 0
    assert_invariants(fed)
    for ledger in fed.banks.values():
        assert ledger.statement("settlement").entries == []
    # Nothing is left open: the next cycle may start.
    assert fed.clearing.open_settlement().settlement_id == 2


def test_the_clearing_refuses_what_a_cycle_does_not_allow(
    open_federation: FederationFactory,
) -> None:
    fed = open_federation(BANKS[:3])
    rng = random.Random(3)
    for _ in range(8):
        fed.transfer(rng)
    with pytest.raises(UnknownSettlement):
        fed.clearing.get_settlement(1)
    assert fed.clearing.settlements() == []
    view = fed.clearing.open_settlement()
    first = view.obligations[0]
    bystander = next(b for b in fed.banks if b != first.creditor)
    with pytest.raises(SettlementOpen):
        fed.clearing.open_settlement()
    with pytest.raises(UnknownSettlement):
        confirm(fed.clearing, 2, 1, first.creditor)
    with pytest.raises(UnknownObligation):
        confirm(fed.clearing, 1, len(view.obligations) + 1, first.creditor)
    with pytest.raises(NotCreditor):
        confirm(fed.clearing, 1, first.number, bystander)
    # None of it was written.
    assert fed.clearing.get_settlement(1) == view
    assert [s.settlement_id for s in fed.clearing.settlements()] == [1]
    assert events_of(fed.clearing, settlement_uuid(1), SettlementCycle.ObligationConfirmed) == []


@pytest.mark.parametrize("spent", ["committed", "in flight"])
def test_a_creditor_cannot_spend_past_its_limit_the_credit_its_open_cycle_pays_out(
    open_federation: FederationFactory, spent: str
) -> None:
    """Invariant 5 through a cycle: college is owed 100, and its limit lets it owe 50. Once
    the cycle completes, the 100 is paid to college outside the system, so that credit is
    gone; spending it inside the federation as well, while the cycle is open, must not leave
    college owing more than its limit (the transfer should be refused bank_limit_exceeded)."""
    fed = open_federation(("gp", "college"), limits={"gp": BANK_LIMIT, "college": 50})
    gp_pays = fed.banks["gp"].request_transfer("ann", "college", "ben", 100, "")
    fed.committed.append((gp_pays.value.transfer_id, "gp", "ann", "college", "ben", 100))
    fed.pump.run()
    assert fed.positions() == {"gp": -100, "college": 100}
    view = fed.clearing.open_settlement()
    assert [(o.debtor, o.creditor, o.minutes) for o in view.obligations] == [("gp", "college", 100)]
    # While the cycle is open, college spends 150: within its limit against a position of +100.
    college_pays = fed.banks["college"].request_transfer("ann", "gp", "ben", 150, "")
    if spent == "committed":
        fed.pump.run()
    else:
        fed.pump.step()  # reserved at the clearing house, not yet decided
    view = fed.confirm_all(view)
    assert view.status == CycleStatus.COMPLETED
    fed.pump.run()
    status = fed.clearing.get_transfer(college_pays.value.transfer_id).status
    if status == "committed":
        fed.committed.append((college_pays.value.transfer_id, "college", "ann", "gp", "ben", 150))
    for bank in fed.clearing.banks():
        assert bank.reserved_minutes - bank.position_minutes <= bank.limit_minutes, bank
    assert_invariants(fed)
    assert_settled_once(fed, view)


def test_a_bank_cannot_tell_the_clearing_house_a_cycle_completed(
    open_federation: FederationFactory,
) -> None:
    fed = open_federation(BANKS[:2])
    fed.transfer(random.Random(1))
    before = fed.positions()
    forged = Envelope(
        source="gp",
        destination=CLEARING,
        seq=1 + sum(1 for r in fed.pump.received[CLEARING] if r.envelope.source == "gp"),
        message=SettlementCompleted(settlement_id=1, paid_minutes=0, received_minutes=500),
    )
    [result] = fed.clearing.receive([forged])
    assert result.outcome is Outcome.REJECTED
    assert fed.positions() == before
    assert fed.clearing.settlements() == []
