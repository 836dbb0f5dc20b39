"""A bank's side of its cross-bank transfers, as a replay meets their events: the ``transfer``
rule (held when started; once committed posted once on each side; once aborted posted nowhere
and its hold, if any, voided)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from services.audit.decoding import TransferStarted
from services.audit.findings import IDENTITY, TRANSFER, EventRef, Report
from services.ledger.domain_terms import (
    FEDERATION_ACCOUNT,
    Role,
    TransferStatus,
    transfer_id_to_uuid,
)

_WAITING, _OPEN, _DONE = "waiting", "open", "done"


@dataclass(slots=True)
class _Transfer:
    """This bank's side of a cross-bank transfer, as far as the log has shown it."""

    transfer_id: str
    last: EventRef
    started: bool = False
    role: str = ""
    member_id: str = ""
    minutes: int = 0
    status: str = TransferStatus.PENDING
    holds: list[tuple[str, int]] = field(default_factory=list)
    posted: list[tuple[str, int]] = field(default_factory=list)
    voided: int = 0
    credits: list[tuple[str, int]] = field(default_factory=list)

    @property
    def held_on(self) -> str:
        return self.member_id if self.role == Role.PAYER else FEDERATION_ACCOUNT

    @property
    def credited(self) -> str:
        return FEDERATION_ACCOUNT if self.role == Role.PAYER else self.member_id


class TransferBook:
    """Every transfer the log has shown and not yet judged, and when each will be.

    A transfer's events come from more than one save (its start and hold; its decision and the
    postings or void), and within a save in no fixed order, so it is judged only once nothing
    more of its save can follow: when ``expire`` is told that enough events have passed since
    it was last whole, or at ``finish``. One still half-recorded then has lost a part.
    """

    def __init__(self, report: Report, waiting_since: Callable[[int], None]) -> None:
        self._report = report
        # Told each time something begins waiting, so the replay knows when to expire it.
        self._waiting_since = waiting_since
        self._transfers: dict[str, _Transfer] = {}
        # Transfers half-recorded (not yet consistent), and since which position.
        self._unsettled: dict[str, int] = {}
        # Transfers decided and carried out, and since which position: judged once no more of
        # their save can follow (a payee bank's save can hold a credit request and its abort,
        # and the transfer's events come before the hold placed and voided on its account).
        self._finished: dict[str, int] = {}
        # A pending transfer's aggregate id -> its transfer id, so its decision finds it.
        self._ids: dict[int | str, str] = {}

    @property
    def settled(self) -> bool:
        """Whether no transfer is half-recorded."""
        return not self._unsettled

    def oldest(self) -> list[int]:
        """Since when the longest-waiting half-recorded and finished transfers have waited."""
        return [*_first(self._unsettled), *_first(self._finished)]

    # What the log shows of a transfer.

    def started(self, event: TransferStarted, ref: EventRef) -> None:
        transfer_id = event.transfer_id
        label = f"transfer {transfer_id}"
        if ref.originator_id != transfer_id_to_uuid(transfer_id):
            self._report(ref, IDENTITY, f"this aggregate is not transfer {transfer_id}", label)
        transfer = self._transfer(transfer_id, ref)
        if transfer.started:
            self._report(ref, TRANSFER, f"transfer {transfer_id} starts again", label)
        transfer.started = True
        transfer.role, transfer.member_id = event.role, event.member_id
        transfer.minutes = event.minutes
        # Remembered under the aggregate id, so decisions find it.
        self._ids[ref.key] = transfer_id
        self._review(transfer, ref)

    def decided(self, status: TransferStatus, ref: EventRef) -> None:
        transfer_id = self._ids.pop(ref.key, None)
        if transfer_id is None or transfer_id not in self._transfers:
            self._report(ref, TRANSFER, "a decision on a transfer that is not pending here")
            return
        transfer = self._transfer(transfer_id, ref)
        transfer.status = status
        self._review(transfer, ref)

    def held(self, transfer_id: str, account: str, minutes: int, ref: EventRef) -> None:
        transfer = self._transfer(transfer_id, ref)
        transfer.holds.append((account, minutes))
        self._review(transfer, ref)

    def posted(self, transfer_id: str, account: str, minutes: int, ref: EventRef) -> None:
        transfer = self._transfer(transfer_id, ref)
        transfer.posted.append((account, minutes))
        self._review(transfer, ref)

    def voided(self, transfer_id: str, ref: EventRef) -> None:
        transfer = self._transfer(transfer_id, ref)
        transfer.voided += 1
        self._review(transfer, ref)

    def credited(self, transfer_id: str, account: str, minutes: int, ref: EventRef) -> None:
        transfer = self._transfer(transfer_id, ref)
        transfer.credits.append((account, minutes))
        self._review(transfer, ref)

    # Judging them.

    def expire(self, horizon: int) -> None:
        """Judge every transfer that has waited since before ``horizon``: each table is in the
        order its entries began waiting, so only its oldest entries need looking at."""
        while self._unsettled:
            transfer_id, since = next(iter(self._unsettled.items()))
            if since >= horizon:
                break
            self._give_up_on(transfer_id)
        while self._finished:
            transfer_id, since = next(iter(self._finished.items()))
            if since >= horizon:
                break
            del self._finished[transfer_id]
            self._validate(self._transfers.pop(transfer_id))

    def finish(self) -> None:
        """The end of the replay: every transfer judged as it stands."""
        for transfer_id in list(self._unsettled):
            self._give_up_on(transfer_id)
        # Finished, or still pending and held (consistent so far, but its hold must be right).
        for transfer in self._transfers.values():
            self._validate(transfer)

    def _transfer(self, transfer_id: str, ref: EventRef) -> _Transfer:
        transfer = self._transfers.get(transfer_id)
        if transfer is None:
            transfer = self._transfers[transfer_id] = _Transfer(transfer_id, ref)
        transfer.last = ref
        return transfer

    def _review(self, transfer: _Transfer, ref: EventRef) -> None:
        """Note whether a transfer's events so far are whole: half-recorded (the rest of its
        save should follow), pending and held, or decided and carried out."""
        state, _ = _state(transfer)
        transfer_id = transfer.transfer_id
        self._finished.pop(transfer_id, None)
        if state == _WAITING:
            if transfer_id not in self._unsettled:
                self._unsettled[transfer_id] = ref.position
                self._waiting_since(ref.position)
            return
        self._unsettled.pop(transfer_id, None)
        if state == _DONE:
            # Put at the end: the table stays in order of position.
            self._finished[transfer_id] = ref.position
            self._waiting_since(ref.position)

    def _validate(self, t: _Transfer) -> None:
        errors = _errors(t)
        if errors:
            self._report(
                t.last,
                TRANSFER,
                f"transfer {t.transfer_id} ({t.role}, {t.minutes} minutes, {t.status}): "
                + "; ".join(errors),
                f"transfer {t.transfer_id}",
            )

    def _give_up_on(self, transfer_id: str) -> None:
        self._unsettled.pop(transfer_id, None)
        self._finished.pop(transfer_id, None)
        transfer = self._transfers.pop(transfer_id)
        _, reason = _state(transfer)
        status = transfer.status if transfer.started else "unknown"
        errors = _errors(transfer) if transfer.started else []
        self._report(
            transfer.last,
            TRANSFER,
            f"transfer {transfer_id} ({status}): " + "; ".join([reason, *errors]),
            f"transfer {transfer_id}",
        )


def _first(table: dict[str, int]) -> list[int]:
    return [next(iter(table.values()))] if table else []


def _state(t: _Transfer) -> tuple[str, str]:
    """Whether the transfer is half-recorded (_WAITING, and why), pending and held (_OPEN), or
    decided and carried out (_DONE)."""
    if not t.started:
        return _WAITING, "its hold or postings have no Started event here"
    if t.status == TransferStatus.PENDING:
        return _pending_state(t)
    if t.status == TransferStatus.COMMITTED:
        return _committed_state(t)
    if t.holds and t.voided < len(t.holds) and not t.posted:
        return _WAITING, "it is aborted, but its hold is not voided"
    return _DONE, ""


def _pending_state(t: _Transfer) -> tuple[str, str]:
    if t.posted or t.voided or t.credits:
        return _WAITING, "it is posted or voided, but never decided"
    if not t.holds:
        return _WAITING, "it started, but no hold was placed"
    return _OPEN, ""


def _committed_state(t: _Transfer) -> tuple[str, str]:
    if not t.holds:
        return _WAITING, "it is committed, but no hold was ever placed"
    if not t.posted or not t.credits:
        return _WAITING, "it is committed, but not posted on both sides"
    return _DONE, ""


def _errors(t: _Transfer) -> list[str]:
    """What is wrong with the transfer's holds and postings, against its own terms."""
    errors = []
    if t.role == Role.PAYER and not t.holds:
        errors.append("the payer's minutes were never held")
    if len(t.holds) > 1:
        errors.append(f"it is held {len(t.holds)} times")
    errors += _mismatches(t.holds, "it is held on {} for {} minutes", (t.held_on, t.minutes))
    if t.status == TransferStatus.COMMITTED:
        errors += _commit_errors(t)
    elif t.status == TransferStatus.ABORTED and (t.posted or t.credits):
        errors.append("it is aborted, but posted")
    return errors


def _commit_errors(t: _Transfer) -> list[str]:
    errors = []
    if len(t.posted) != 1 or len(t.credits) != 1:
        errors.append(
            f"it is posted {len(t.posted)} time(s) and credited {len(t.credits)} "
            "time(s), not once each"
        )
    errors += _mismatches(t.posted, "{} is debited {} minutes for it", (t.held_on, t.minutes))
    errors += _mismatches(t.credits, "{} is credited {} minutes for it", (t.credited, t.minutes))
    return errors


def _mismatches(
    entries: list[tuple[str, int]], template: str, expected: tuple[str, int]
) -> list[str]:
    """Each (account, minutes) that is not the one expected, described by ``template``."""
    return [
        template.format(account, minutes)
        for account, minutes in entries
        if (account, minutes) != expected
    ]
