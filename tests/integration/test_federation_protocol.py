"""Whole federations (a Clearing and several Ledgers, each on its own real store) wired by an
in-process bus: cross-bank transfers commit or abort, exactly once, with every invariant kept."""

from __future__ import annotations

import contextlib
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
from services.clearing.domain_terms import UnknownTransfer as ClearingUnknownTransfer
from services.clearing.domain_terms import (
    bank_id_to_uuid,
)
from services.common.inbox import Outcome, Received, UnitOfWork
from services.common.outbox import QUEUED_TOPIC, envelope_of
from services.common.stores import parse_store_url
from services.ledger.application import Ledger
from services.ledger.domain import (
    Account,
)
from services.ledger.domain_terms import (
    OverdraftLimitExceeded,
    UnknownBank,
    UnknownMember,
    UnknownTransfer,
    account_id,
)
from shared.protocol import (
    CLEARING,
    AnyMessage,
    CreditPrepared,
    CreditRequested,
    Envelope,
    TransferAborted,
    TransferCommitted,
)
from tests.helpers import Clock

DEADLINE_SECONDS = 30
START = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
BANK_LIMIT = 600
SYSTEM_IDS = ("federation", "settlement")


Rule = Callable[[Envelope], bool]


@dataclass
class Federation:
    """An in-process bus: reads each application's outbox (its Outbox.Queued events, in log
    order) and hands the envelopes to the destination's receive(), as the relay and the
    consumers would over JetStream.

    Faults, per destination: ``drop`` loses matching envelopes until the receiver, stuck on
    the gap, gets them re-published; ``hold`` keeps matching ones back until ``release``;
    ``duplicate_to`` sends every envelope twice; ``stop`` delivers nothing until ``resume``.
    With an ``rng`` it also loses and duplicates at random, shuffles what is in flight and
    delivers in batches of random size up to ``max_batch``.
    """

    clearing: Clearing
    banks: dict[str, Ledger]
    clock: Clock
    rng: random.Random | None = None
    max_batch: int | None = None
    duplicate_rate: float = 0.0
    drop_rate: float = 0.0
    duplicate_to: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)
    drop_rules: dict[str, Rule] = field(default_factory=dict)
    hold_rules: dict[str, Rule] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.apps: dict[str, Any] = {CLEARING: self.clearing, **self.banks}
        self._read = dict.fromkeys(self.apps, 0)
        self.in_flight: dict[str, list[Envelope]] = {name: [] for name in self.apps}
        self.held: dict[str, list[Envelope]] = {name: [] for name in self.apps}
        self.lost: dict[str, list[Envelope]] = {name: [] for name in self.apps}
        # Every outcome each destination reported, in delivery order.
        self.received: dict[str, list[Received]] = {name: [] for name in self.apps}

    # Publishing: what the outbox relays do.

    def collect(self) -> int:
        """Publish everything queued since the last call; returns how many envelopes."""
        published = 0
        for name, app in self.apps.items():
            for _ in range(10_000):
                batch = app.recorder.select_notifications(
                    start=self._read[name] + 1, limit=500, topics=[QUEUED_TOPIC]
                )
                if not batch:
                    break
                self._read[name] = batch[-1].id
                for notification in batch:
                    self._publish(envelope_of(app.mapper.to_domain_event(notification)))
                published += len(batch)
        return published

    def _chance(self, rate: float) -> bool:
        return self.rng is not None and self.rng.random() < rate

    def _publish(self, envelope: Envelope) -> None:
        destination = envelope.destination
        self.counts["published"] += 1
        hold = self.hold_rules.get(destination)
        if hold is not None and hold(envelope):
            self.held[destination].append(envelope)
            return
        drop = self.drop_rules.get(destination)
        if (drop is not None and drop(envelope)) or self._chance(self.drop_rate):
            self.counts["dropped"] += 1
            self.lost[destination].append(envelope)
            return
        copies = 1
        if destination in self.duplicate_to or self._chance(self.duplicate_rate):
            self.counts["duplicated"] += 1
            copies = 2
        self.in_flight[destination] += [envelope] * copies

    # Delivering: what the consumers do.

    def deliver(self, destination: str) -> int:
        """One batch to one destination; envelopes that hit a gap stay in flight (a NAK)."""
        queue = self.in_flight[destination]
        size = len(queue)
        if self.rng is not None:
            self.rng.shuffle(queue)
            if self.max_batch is not None:
                size = self.rng.randint(1, self.max_batch)
        elif self.max_batch is not None:
            size = self.max_batch
        batch, rest = queue[:size], queue[size:]
        results = self.apps[destination].receive(batch)
        assert sorted(r.envelope.seq for r in results) == sorted(e.seq for e in batch)
        self.received[destination] += results
        waiting = [r.envelope for r in results if r.outcome is Outcome.GAP]
        self.in_flight[destination] = rest + waiting
        return len(batch) - len(waiting)

    def step(self) -> int:
        """Publish, then one batch to every destination that is listening; returns the moves."""
        moved = self.collect()
        destinations = list(self.apps)
        if self.rng is not None:
            self.rng.shuffle(destinations)
        for destination in destinations:
            if destination not in self.stopped and self.in_flight[destination]:
                delivered = len(self.received[destination])
                moved += self.deliver(destination)
                gaps = self.outcomes(destination)[delivered:]
                if Outcome.GAP in gaps:
                    moved += self.republish(destination)
        return moved

    def republish(self, only: str | None = None) -> int:
        """A receiver stuck on a gap asks for a re-publish: lost envelopes go out again."""
        moved = 0
        for destination, lost in self.lost.items():
            if destination not in self.stopped and lost and only in (None, destination):
                self.in_flight[destination] += lost
                moved += len(lost)
                self.lost[destination] = []
        return moved

    def flush(self) -> int:
        """Everything in flight to every listening destination in one batch each."""
        moved = 0
        for destination, queue in self.in_flight.items():
            if destination not in self.stopped and queue:
                results = self.apps[destination].receive(queue)
                self.received[destination] += results
                self.in_flight[destination] = [
                    r.envelope for r in results if r.outcome is Outcome.GAP
                ]
                moved += len(queue) - len(self.in_flight[destination])
        return moved

    def pump(self, max_rounds: int = 2_000) -> None:
        """Move messages until nothing moves (stopped banks and held messages wait)."""
        for _ in range(max_rounds):
            # Random small batches can miss the one envelope a gap waits for: only a batch
            # of everything in flight that still moves nothing means the bus is quiet.
            if not self.step() and not self.flush() and not self.republish():
                return
        raise AssertionError(f"the federation did not go quiet in {max_rounds} rounds")

    def run(self, rounds: int) -> None:
        """A few rounds only: transfers stay in flight while others start."""
        for _ in range(rounds):
            self.step()

    # Faults.

    def stop(self, bank_id: str) -> None:
        self.stopped.add(bank_id)

    def resume(self, bank_id: str) -> None:
        self.stopped.discard(bank_id)

    def release(self, destination: str) -> None:
        self.hold_rules.pop(destination, None)
        self.in_flight[destination] = self.held[destination] + self.in_flight[destination]
        self.held[destination] = []

    # Reading the books.

    def outcomes(self, destination: str) -> list[Outcome]:
        return [r.outcome for r in self.received[destination]]

    def positions(self) -> dict[str, int]:
        return self.clearing.positions()

    def everyone_quiet(self) -> bool:
        queues = (self.in_flight, self.held, self.lost)
        return not any(envelopes for queue in queues for envelopes in queue.values())


def transfer_of(envelope: Envelope) -> str | None:
    return getattr(envelope.message, "transfer_id", None)


FederationFactory = Callable[..., Federation]


@pytest.fixture
def open_federation(new_store_url: Callable[[str], str]) -> Iterator[FederationFactory]:
    """Start a clearing house and one ledger per bank, admit the banks (limit per bank) and,
    unless told not to, deliver the directory; every application is closed after the test."""
    opened: list[Application[Any]] = []

    def factory(
        limits: dict[str, int] | None = None, *, announce: bool = True, **options: Any
    ) -> Federation:
        limits = limits or {"gp": BANK_LIMIT, "college": BANK_LIMIT}
        clock = Clock(START)
        clearing = Clearing(
            parse_store_url(new_store_url(CLEARING)),
            deadline_seconds=DEADLINE_SECONDS,
            clock=clock,
        )
        opened.append(clearing)
        banks = {}
        for bank_id in limits:
            banks[bank_id] = Ledger(bank_id, parse_store_url(new_store_url(bank_id)))
            opened.append(banks[bank_id])
        fed = Federation(clearing, banks, clock, **options)
        for bank_id, limit in limits.items():
            clearing.admit_bank(bank_id, bank_id.title(), limit)
        if announce:
            fed.pump()
        return fed

    yield factory
    for app in opened:
        app.close()


@pytest.fixture
def fed(open_federation: FederationFactory) -> Federation:
    """gp and college, each with one member: maya at gp and bob at college."""
    federation = open_federation()
    federation.banks["gp"].open_member("maya", "Maya", "person")
    federation.banks["college"].open_member("bob", "Bob", "person")
    return federation


def pay(fed: Federation, minutes: int = 90, payee: str = "bob", memo: str = "a course") -> str:
    """maya@gp asks to pay payee@college; returns the transfer id (nothing delivered yet)."""
    return (
        fed.banks["gp"].request_transfer("maya", "college", payee, minutes, memo).value.transfer_id
    )


def committed_transfer(fed: Federation) -> str:
    transfer_id = pay(fed)
    fed.pump()
    return transfer_id


def queued_count(app: Application[Any]) -> int:
    return len(app.recorder.select_notifications(start=1, limit=10_000, topics=[QUEUED_TOPIC]))


def requeue_decision(fed: Federation, transfer_id: str, message: AnyMessage | None = None) -> None:
    """The clearing house sends a decision again to the banks that applied it, through its own
    outbox (so with a new seq), as a re-send of an unacknowledged decision would."""
    view = fed.clearing.get_transfer(transfer_id)
    if message is None:
        message = (
            TransferCommitted(
                transfer_id=transfer_id,
                payer_bank=view.payer_bank,
                payee_bank=view.payee_bank,
                minutes=view.minutes,
            )
            if view.status == "committed"
            else TransferAborted(transfer_id=transfer_id, reason=view.reason or "")
        )
    uow = UnitOfWork(fed.clearing, CLEARING)
    for bank_id in view.acknowledged_by:
        uow.send(bank_id, message, sender=CLEARING)
    fed.clearing.save(*uow.aggregates)


def books(fed: Federation) -> dict[str, Any]:
    """Everything a transfer could change: every account, statement and the positions."""
    state: dict[str, Any] = {"positions": fed.positions()}
    for bank_id, ledger in fed.banks.items():
        for member_id in ("maya", "bob", *SYSTEM_IDS):
            with contextlib.suppress(UnknownMember):  # each member lives at one bank only
                state[f"{bank_id}/{member_id}"] = (
                    ledger.get_member(member_id),
                    ledger.statement(member_id).entries,
                )
    return state


# A transfer that commits.


def test_committed_transfer_posts_the_payers_hold_and_credits_the_payee(fed: Federation) -> None:
    transfer_id = pay(fed)
    maya = fed.banks["gp"].get_member("maya")
    assert (maya.balance_minutes, maya.held_minutes) == (0, 90)
    fed.pump()
    maya = fed.banks["gp"].get_member("maya")
    bob = fed.banks["college"].get_member("bob")
    assert (maya.balance_minutes, maya.held_minutes, maya.available_minutes) == (-90, 0, -90)
    assert (bob.balance_minutes, bob.held_minutes) == (90, 0)
    assert fed.banks["college"].get_member("federation").held_minutes == 0
    assert fed.banks["gp"].get_transfer(transfer_id).status == "committed"
    assert fed.banks["college"].get_transfer(transfer_id).status == "committed"


def test_committed_transfer_statements_name_the_other_bank_as_a_transfer(
    fed: Federation,
) -> None:
    transfer_id = committed_transfer(fed)
    [paid] = fed.banks["gp"].statement("maya").entries
    [earned] = fed.banks["college"].statement("bob").entries
    assert (paid.minutes, paid.counterparty, paid.kind, paid.memo) == (
        -90,
        "college/bob",
        "transfer",
        "a course",
    )
    assert (earned.minutes, earned.counterparty, earned.kind, earned.memo) == (
        90,
        "gp/maya",
        "transfer",
        "a course",
    )
    assert paid.entry_id == earned.entry_id == transfer_id


def test_committed_transfer_is_committed_at_the_clearing_and_acknowledged_by_both(
    fed: Federation,
) -> None:
    transfer_id = committed_transfer(fed)
    view = fed.clearing.get_transfer(transfer_id)
    assert (view.status, view.reason) == ("committed", None)
    assert sorted(view.acknowledged_by) == ["college", "gp"]
    assert all(o is Outcome.APPLIED for name in fed.apps for o in fed.outcomes(name))


def test_committed_transfer_moves_positions_and_federation_accounts_opposite_ways(
    fed: Federation,
) -> None:
    committed_transfer(fed)
    assert fed.positions() == {"gp": -90, "college": 90}
    assert fed.banks["gp"].get_member("federation").balance_minutes == 90
    assert fed.banks["college"].get_member("federation").balance_minutes == -90
    assert {b.bank_id: b.reserved_minutes for b in fed.clearing.banks()} == {"gp": 0, "college": 0}
    assert fed.banks["gp"].summary().total_posted_minutes == 0
    assert fed.banks["college"].summary().total_posted_minutes == 0


# Transfers that abort, or are refused before anything is sent.


def assert_aborted_nothing_posted(fed: Federation, transfer_id: str, reason: str) -> None:
    view = fed.clearing.get_transfer(transfer_id)
    assert (view.status, view.reason) == ("aborted", reason)
    assert fed.banks["gp"].get_transfer(transfer_id).status == "aborted"
    assert fed.banks["gp"].get_transfer(transfer_id).reason == reason
    maya = fed.banks["gp"].get_member("maya")
    assert (maya.balance_minutes, maya.held_minutes) == (0, 0)
    assert fed.banks["gp"].statement("maya").entries == []
    assert fed.banks["college"].statement("bob").entries == []
    for ledger in fed.banks.values():
        federation = ledger.get_member("federation")
        assert (federation.balance_minutes, federation.held_minutes) == (0, 0)
    assert fed.positions() == {"gp": 0, "college": 0}
    assert {b.bank_id: b.reserved_minutes for b in fed.clearing.banks()} == {"gp": 0, "college": 0}


# A system account is no member: it cannot be paid from another bank either.
@pytest.mark.parametrize("payee", ["nobody", "federation"])
def test_transfer_to_an_unknown_payee_is_aborted_at_both_banks_and_posts_nothing(
    fed: Federation, payee: str
) -> None:
    transfer_id = pay(fed, payee=payee)
    fed.pump()
    assert_aborted_nothing_posted(fed, transfer_id, "unknown_payee")
    at_college = fed.banks["college"].get_transfer(transfer_id)
    assert (at_college.status, at_college.reason) == ("aborted", "unknown_payee")
    assert sorted(fed.clearing.get_transfer(transfer_id).acknowledged_by) == ["college", "gp"]


def test_transfer_over_the_payers_overdraft_is_refused_and_queues_nothing(
    fed: Federation,
) -> None:
    gp = fed.banks["gp"]
    before = (queued_count(gp), gp.get_member("maya"))
    with pytest.raises(OverdraftLimitExceeded):
        pay(fed, minutes=601)
    assert (queued_count(gp), gp.get_member("maya")) == before
    assert fed.collect() == 0
    pay(fed, minutes=600)  # exactly the limit is allowed: the refusal was the limit's
    assert queued_count(gp) == before[0] + 1


def test_transfer_past_the_payer_banks_clearing_limit_is_aborted_and_the_hold_voided(
    open_federation: FederationFactory,
) -> None:
    fed = open_federation({"gp": 100, "college": BANK_LIMIT})
    fed.banks["gp"].open_member("maya", "Maya", "person")
    fed.banks["college"].open_member("bob", "Bob", "person")
    within = pay(fed, minutes=60)
    beyond = pay(fed, minutes=41)
    fed.pump()
    assert fed.clearing.get_transfer(within).status == "committed"
    view = fed.clearing.get_transfer(beyond)
    assert (view.status, view.reason, view.acknowledged_by) == (
        "aborted",
        "bank_limit_exceeded",
        ["gp"],
    )
    maya = fed.banks["gp"].get_member("maya")
    assert (maya.balance_minutes, maya.held_minutes) == (-60, 0)
    assert fed.banks["gp"].get_transfer(beyond).reason == "bank_limit_exceeded"
    # The payee's bank was never asked, so it has nothing to undo.
    with pytest.raises(UnknownTransfer):
        fed.banks["college"].get_transfer(beyond)
    assert fed.positions() == {"gp": -60, "college": 60}


@pytest.mark.parametrize("suspended", ["gp", "college"])
def test_transfer_involving_a_suspended_bank_is_aborted_bank_suspended(
    fed: Federation, suspended: str
) -> None:
    fed.clearing.suspend_bank(suspended)
    fed.pump()
    assert fed.banks["gp"].known_banks()[suspended]["status"] == "suspended"
    transfer_id = pay(fed)
    fed.pump()
    assert_aborted_nothing_posted(fed, transfer_id, "bank_suspended")
    with pytest.raises(UnknownTransfer):
        fed.banks["college"].get_transfer(transfer_id)


def test_transfer_after_reinstatement_commits(fed: Federation) -> None:
    fed.clearing.suspend_bank("college")
    fed.clearing.reinstate_bank("college")
    fed.pump()
    assert fed.banks["gp"].known_banks()["college"]["status"] == "active"
    assert fed.clearing.get_transfer(committed_transfer(fed)).status == "committed"


def test_request_to_a_bank_the_clearing_has_not_announced_raises_unknown_bank(
    open_federation: FederationFactory,
) -> None:
    fed = open_federation(announce=False)
    gp = fed.banks["gp"]
    gp.open_member("maya", "Maya", "person")
    with pytest.raises(UnknownBank):
        gp.request_transfer("maya", "college", "bob", 30, "")
    fed.pump()
    assert set(gp.known_banks()) == {"gp", "college"}
    with pytest.raises(UnknownBank):
        gp.request_transfer("maya", "nowhere", "bob", 30, "")
    assert queued_count(gp) == 0
    assert gp.get_member("maya").held_minutes == 0
    assert gp.request_transfer("maya", "college", "bob", 30, "").value.status == "pending"


# Deadlines.


def expire_while_college_is_away(fed: Federation) -> str:
    fed.stop("college")
    transfer_id = pay(fed)
    fed.pump()
    assert fed.clearing.expire_overdue() == []  # not yet due
    fed.clock.advance(seconds=DEADLINE_SECONDS + 1)
    assert fed.clearing.expire_overdue() == [transfer_id]
    fed.pump()
    return transfer_id


def test_payee_bank_silent_past_the_deadline_gets_the_transfer_aborted_at_the_payer(
    fed: Federation,
) -> None:
    transfer_id = expire_while_college_is_away(fed)
    at_gp = fed.banks["gp"].get_transfer(transfer_id)
    assert (at_gp.status, at_gp.reason) == ("aborted", "deadline_exceeded")
    maya = fed.banks["gp"].get_member("maya")
    assert (maya.balance_minutes, maya.held_minutes) == (0, 0)
    assert fed.clearing.get_transfer(transfer_id).acknowledged_by == ["gp"]
    assert fed.positions() == {"gp": 0, "college": 0}


def test_payee_bank_back_after_the_deadline_applies_the_request_then_the_abort(
    fed: Federation,
) -> None:
    transfer_id = expire_while_college_is_away(fed)
    fed.resume("college")
    fed.pump()
    seen = [
        type(r.envelope.message)
        for r in fed.received["college"]
        if transfer_of(r.envelope) == transfer_id
    ]
    assert seen == [CreditRequested, TransferAborted]
    assert fed.outcomes("college").count(Outcome.APPLIED) == len(fed.received["college"])
    assert_aborted_nothing_posted(fed, transfer_id, "deadline_exceeded")
    assert fed.banks["college"].get_transfer(transfer_id).status == "aborted"
    assert sorted(fed.clearing.get_transfer(transfer_id).acknowledged_by) == ["college", "gp"]


# Exactly once.


@pytest.mark.parametrize("batch", [1, None], ids=["one-per-batch", "same-batch"])
def test_every_message_delivered_twice_has_one_effect(
    open_federation: FederationFactory, batch: int | None
) -> None:
    fed = open_federation(max_batch=batch, duplicate_to={CLEARING, "gp", "college"})
    fed.banks["gp"].open_member("maya", "Maya", "person")
    fed.banks["college"].open_member("bob", "Bob", "person")
    committed, aborted = pay(fed, minutes=45), pay(fed, minutes=30, payee="nobody")
    fed.pump()
    assert fed.clearing.get_transfer(committed).status == "committed"
    assert fed.clearing.get_transfer(aborted).reason == "unknown_payee"
    for name in fed.apps:
        counts = Counter(fed.outcomes(name))
        assert counts[Outcome.APPLIED] == counts[Outcome.DUPLICATE] > 0
    assert [e.minutes for e in fed.banks["gp"].statement("maya").entries] == [-45]
    assert [e.minutes for e in fed.banks["college"].statement("bob").entries] == [45]
    assert fed.banks["gp"].get_member("maya").held_minutes == 0
    assert fed.positions() == {"gp": -45, "college": 45}
    assert fed.banks["gp"].get_member("federation").balance_minutes == 45


def test_a_decision_sent_again_is_applied_once_and_acknowledged_again(fed: Federation) -> None:
    committed = committed_transfer(fed)
    aborted = pay(fed, payee="nobody")
    fed.pump()
    before = books(fed)
    requeue_decision(fed, committed)
    requeue_decision(fed, aborted)
    fed.pump()
    assert books(fed) == before
    for bank_id in ("gp", "college"):
        again = fed.received[bank_id][-2:]
        assert [type(r.envelope.message) for r in again] == [TransferCommitted, TransferAborted]
        assert [r.outcome for r in again] == [Outcome.APPLIED, Outcome.APPLIED]
    assert Outcome.REJECTED not in fed.outcomes(CLEARING)
    assert sorted(fed.clearing.get_transfer(committed).acknowledged_by) == ["college", "gp"]


def test_a_decision_contradicting_the_applied_one_is_rejected_and_changes_nothing(
    fed: Federation,
) -> None:
    transfer_id = committed_transfer(fed)
    before = books(fed)
    requeue_decision(fed, transfer_id, TransferAborted(transfer_id=transfer_id, reason="x"))
    fed.pump()
    assert books(fed) == before
    for bank_id in ("gp", "college"):
        assert fed.received[bank_id][-1].outcome is Outcome.REJECTED


def test_a_message_after_a_missing_one_waits_as_a_gap_until_the_missing_one_arrives(
    fed: Federation,
) -> None:
    first, second = pay(fed, minutes=20), pay(fed, minutes=25)
    fed.hold_rules["college"] = lambda e: transfer_of(e) == first
    fed.pump()
    later = [r for r in fed.received["college"] if transfer_of(r.envelope) == second]
    assert later
    assert {r.outcome for r in later} == {Outcome.GAP}
    with pytest.raises(UnknownTransfer):
        fed.banks["college"].get_transfer(second)
    assert fed.banks["college"].statement("bob").entries == []
    fed.release("college")
    fed.pump()
    assert fed.everyone_quiet()
    assert fed.clearing.get_transfer(first).status == "committed"
    assert fed.clearing.get_transfer(second).status == "committed"
    assert [e.minutes for e in fed.banks["college"].statement("bob").entries] == [20, 25]
    assert fed.positions() == {"gp": -45, "college": 45}


def test_a_lost_message_is_applied_once_it_is_republished(fed: Federation) -> None:
    first, second = pay(fed, minutes=20), pay(fed, minutes=25)
    fed.drop_rules[CLEARING] = lambda e: (
        isinstance(e.message, CreditPrepared) and e.message.transfer_id == first
    )
    fed.pump()
    assert fed.counts["dropped"] == 1
    stuck = [r for r in fed.received[CLEARING] if r.outcome is Outcome.GAP]
    assert {transfer_of(r.envelope) for r in stuck} == {second}
    assert fed.clearing.get_transfer(first).status == "committed"
    assert fed.clearing.get_transfer(second).status == "committed"
    assert fed.positions() == {"gp": -45, "college": 45}


# Invariants under a random mix.

MIX_BANKS = {"gp": 500, "college": 500, "library": 500}
MIX_MEMBERS = ("ann", "ben", "cat")
MIX_TRANSFERS = 150
MIX_OVERDRAFT = 300


@dataclass
class MixPlan:
    """When the random mix suspends a bank, and when it lets a bank fall silent past deadlines."""

    suspend: dict[int, str] = field(default_factory=lambda: {40: "library"})
    reinstate: dict[int, str] = field(default_factory=lambda: {70: "library"})
    silence: dict[int, str] = field(default_factory=lambda: {100: "college"})
    expire_at: dict[int, str] = field(default_factory=lambda: {110: "college"})
    # Steps at which the clearing house sends an applied decision again.
    resend_at: frozenset[int] = frozenset(range(20, MIX_TRANSFERS, 10))


def is_applied(fed: Federation, transfer_id: str) -> bool:
    try:
        return bool(fed.clearing.get_transfer(transfer_id).acknowledged_by)
    except ClearingUnknownTransfer:  # its request has not reached the clearing house yet
        return False


def mix_step(
    fed: Federation, rng: random.Random, i: int, plan: MixPlan, started: list[str]
) -> str | None:
    """The i-th step of the mix: status changes and faults, then one transfer request (which
    may be refused at once), then a few rounds of delivery."""
    if i in plan.suspend:
        fed.clearing.suspend_bank(plan.suspend[i])
    if i in plan.reinstate:
        fed.clearing.reinstate_bank(plan.reinstate[i])
    if i in plan.silence:
        fed.stop(plan.silence[i])
    if i in plan.expire_at:
        fed.clock.advance(seconds=DEADLINE_SECONDS + 1)
        fed.clearing.expire_overdue()
        fed.resume(plan.expire_at[i])
    if i in plan.resend_at:
        requeue_decision(fed, rng.choice([t for t in started if is_applied(fed, t)]))
    payer_bank, payee_bank = rng.sample(sorted(fed.banks), 2)
    payee = "ghost" if rng.random() < 0.08 else rng.choice(MIX_MEMBERS)
    transfer_id = None
    try:
        transfer_id = (
            fed.banks[payer_bank]
            .request_transfer(
                rng.choice(MIX_MEMBERS), payee_bank, payee, rng.randint(10, 180), f"job {i}"
            )
            .value.transfer_id
        )
    except OverdraftLimitExceeded:
        fed.counts["overdraft"] += 1
    fed.run(rng.randint(1, 4))
    return transfer_id


def assert_limits_hold(fed: Federation) -> None:
    """Invariant 5, and the always-true parts of 1 and 3, at any moment."""
    for ledger in fed.banks.values():
        for member_id in MIX_MEMBERS:
            member = ledger.get_member(member_id)
            assert member.overdraft_limit_minutes is not None
            assert member.available_minutes >= -member.overdraft_limit_minutes, member
        assert ledger.summary().total_posted_minutes == 0
    for bank in fed.clearing.banks():
        assert bank.reserved_minutes - bank.position_minutes <= bank.limit_minutes, bank
    assert sum(fed.positions().values()) == 0


def postings(events: Iterator[Any], *kinds: type[Any]) -> Counter[str]:
    """How many events of these kinds name each transfer id."""
    found: Counter[str] = Counter()
    for ev in events:
        if isinstance(ev, kinds):
            names = (getattr(ev, key, None) for key in ("transfer_id", "hold_id", "entry_id"))
            found[next(name for name in names if name)] += 1
    return found


def bank_postings(ledger: Ledger, member_id: str) -> Counter[str]:
    events = ledger.events.get(account_id(member_id))
    return postings(events, Account.HoldPosted, Account.Credited, Account.Debited)


def clearing_postings(clearing: Clearing, bank_id: str, kind: type[Any]) -> Counter[str]:
    return postings(clearing.events.get(bank_id_to_uuid(bank_id)), kind)


def assert_posted_exactly_as_decided(fed: Federation, transfer_ids: list[str]) -> None:
    """Invariant 4 for every transfer the mix started."""
    debited = {b: clearing_postings(fed.clearing, b, MemberBank.Debited) for b in fed.banks}
    credited = {b: clearing_postings(fed.clearing, b, MemberBank.Credited) for b in fed.banks}
    held = {
        (b, m): bank_postings(ledger, m)
        for b, ledger in fed.banks.items()
        for m in (*MIX_MEMBERS, "federation")
    }
    for transfer_id in transfer_ids:
        view = fed.clearing.get_transfer(transfer_id)
        expected = 1 if view.status == "committed" else 0
        assert view.status in ("committed", "aborted"), view
        at_payer = fed.banks[view.payer_bank].get_transfer(transfer_id).status
        # The ledger's TransferStatus and the clearing's TransferPhase: equal as strings.
        assert at_payer.value == view.status.value
        # The payee's bank knows the transfer only if the clearing house asked it; then it
        # applied the same decision and said so.
        try:
            at_payee = fed.banks[view.payee_bank].get_transfer(transfer_id).status
        except UnknownTransfer:
            at_payee = None
        assert at_payee is None or at_payee.value == view.status.value, view
        told = {view.payer_bank} | ({view.payee_bank} if at_payee else set())
        assert set(view.acknowledged_by) == told, view
        assert debited[view.payer_bank][transfer_id] == expected, view
        assert credited[view.payee_bank][transfer_id] == expected, view
        # Payer bank: the payer's hold posted, and the federation account credited.
        assert held[(view.payer_bank, view.payer)][transfer_id] == expected, view
        assert held[(view.payer_bank, "federation")][transfer_id] == expected, view
        # Payee bank: the federation account's pending credit posted, and the payee credited.
        assert held[(view.payee_bank, "federation")][transfer_id] == expected, view
        if view.payee in MIX_MEMBERS:
            assert held[(view.payee_bank, view.payee)][transfer_id] == expected, view
        for (bank_id, _), found in held.items():
            if bank_id not in (view.payer_bank, view.payee_bank):
                assert found[transfer_id] == 0, view


def assert_settled_books(fed: Federation) -> None:
    """Invariants 1, 2 and 3 once every decision is applied everywhere; no hold is left."""
    positions = fed.positions()
    assert sum(positions.values()) == 0
    for bank_id, ledger in fed.banks.items():
        assert ledger.summary().total_posted_minutes == 0
        assert ledger.get_member("federation").balance_minutes == -positions[bank_id]
        for member_id in (*MIX_MEMBERS, *SYSTEM_IDS):
            assert ledger.get_member(member_id).held_minutes == 0, (bank_id, member_id)
    assert all(b.reserved_minutes == 0 for b in fed.clearing.banks())


def test_a_random_mix_of_transfers_keeps_every_invariant_once_settled(
    open_federation: FederationFactory,
) -> None:
    rng = random.Random(20260101)
    fed = open_federation(MIX_BANKS, rng=rng, max_batch=10, duplicate_rate=0.1, drop_rate=0.03)
    for ledger in fed.banks.values():
        for member_id in MIX_MEMBERS:
            ledger.open_member(member_id, member_id.title(), "person", MIX_OVERDRAFT)
    plan = MixPlan()
    transfer_ids: list[str] = []
    for i in range(MIX_TRANSFERS):
        transfer_id = mix_step(fed, rng, i, plan, transfer_ids)
        if transfer_id is not None:
            transfer_ids.append(transfer_id)
        assert_limits_hold(fed)
    fed.pump()
    assert fed.everyone_quiet()
    assert_limits_hold(fed)
    assert_settled_books(fed)
    assert_posted_exactly_as_decided(fed, transfer_ids)
    for name in fed.apps:
        assert Outcome.REJECTED not in fed.outcomes(name), name
    # The mix did exercise what it claims to: every way to abort, and every fault.
    views = [fed.clearing.get_transfer(t) for t in transfer_ids]
    reasons = Counter(v.reason or v.status for v in views)
    assert reasons["committed"] >= MIX_TRANSFERS // 2, reasons
    assert {"unknown_payee", "bank_limit_exceeded", "bank_suspended", "deadline_exceeded"} <= set(
        reasons
    ), reasons
    all_outcomes = Counter(o for name in fed.apps for o in fed.outcomes(name))
    # Each envelope published took effect exactly once, whatever was lost, doubled or reordered.
    assert all_outcomes[Outcome.APPLIED] == fed.counts["published"]
    assert all_outcomes[Outcome.DUPLICATE] > 0
    assert all_outcomes[Outcome.GAP] > 0
    assert fed.counts["dropped"] > 0
    assert fed.counts["overdraft"] > 0
