"""The bench's verdicts: each log it wrote audited, and the federation's invariants checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.audit.eventlog import EventLog, UnusableStore, open_event_log
from services.audit.federation import audit_federation
from services.audit.findings import BankAudit
from services.audit.replay import Observer, audit_bank
from services.clearing import APPLICATION_NAME as CLEARING

# Enough of a failed check's problems to show what broke.
SHOWN_PROBLEMS = 3


@dataclass(frozen=True)
class Check:
    name: str
    held: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "held": self.held, "detail": self.detail}


def all_held(checks: list[Check]) -> bool:
    """True only if there was something to check and every check held."""
    return bool(checks) and all(check.held for check in checks)


def audit_bank_store(name: str, url: str, default_overdraft_minutes: int) -> Check:
    """`timebank audit bank` on one ledger's store: every rule of services/audit/findings.py."""
    try:
        log = open_event_log(url)
    except UnusableStore as e:
        return Check(f"bank audit: {name}", False, f"cannot be audited: {e}")
    try:
        result = audit_bank(log, default_overdraft_minutes=default_overdraft_minutes)
    except UnusableStore as e:
        return Check(f"bank audit: {name}", False, f"cannot be audited: {e}")
    finally:
        log.close()
    return Check(f"bank audit: {name}", result.ok, _bank_detail(result, log.description))


def _bank_detail(result: BankAudit, description: str) -> str:
    if result.ok:
        return f"{result.events:,} events of {description} replayed; every rule holds"
    shown = "; ".join(
        f"{p.rule} at {p.position}: {p.detail}" for p in result.problems[:SHOWN_PROBLEMS]
    )
    count = len(result.problems) + result.problems_omitted
    return f"{count} problem(s) in {result.events:,} events: {shown}"


def audit_federation_stores(
    clearing_url: str, bank_urls: Mapping[str, str], overdrafts: Mapping[str, int]
) -> Check:
    """`timebank audit federation` on the stores of a stopped federation: each bank's rules,
    invariants 2-4 across the logs, every signed checkpoint."""
    name = "federation audit (every log, at rest)"
    logs: dict[str, EventLog] = {}
    try:
        clearing_log = open_event_log(clearing_url, application=CLEARING)
        logs["clearing"] = clearing_log
        bank_logs = {bank_id: open_event_log(url) for bank_id, url in bank_urls.items()}
        logs.update(bank_logs)

        def bank_audit(bank_id: str, log: EventLog, observe: Observer) -> BankAudit:
            return audit_bank(log, default_overdraft_minutes=overdrafts[bank_id], observe=observe)

        result = audit_federation(clearing_log, bank_logs, bank_audit)
    except UnusableStore as e:
        return Check(name, False, f"cannot be audited: {e}")
    finally:
        for log in logs.values():
            log.close()
    if result.ok:
        events = sum(audit.events for audit in result.banks.values()) + result.clearing_events
        return Check(name, True, f"{events:,} events in {len(logs)} logs; all hold")
    problems = [p for audit in result.banks.values() for p in audit.problems] + result.problems
    shown = "; ".join(f"{p.rule}: {p.detail}" for p in problems[:SHOWN_PROBLEMS])
    return Check(name, False, f"{len(problems)} problem(s): {shown}")


def api_check(name: str, problems: list[str], checked: str) -> Check:
    """The federation's invariants 1-5 as its APIs show them (FederationClient)."""
    if not problems:
        return Check(name, True, f"{checked}: all hold")
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    return Check(name, False, f"{len(problems)} broken: {shown}")
