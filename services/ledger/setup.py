"""What a bank's ledger records once, at its first start (or when its settings change): its
system accounts and its default overdraft limit. Several processes may start on one store at
once; the first to save wins, and the others find it saved."""

from __future__ import annotations

import contextlib

from eventsourcing.persistence import IntegrityError

from services.common.application import ServiceApplication
from services.ledger.domain import Account, BankPolicy
from services.ledger.domain_terms import SYSTEM_ACCOUNTS, MemberKind, account_id


def open_system_accounts(app: ServiceApplication) -> None:
    for member_id in SYSTEM_ACCOUNTS:
        if not app.exists(account_id(member_id)):
            # Another process may open it first; then it exists, which is all we need.
            with contextlib.suppress(IntegrityError):
                app.save(Account.open(member_id, member_id.title(), MemberKind.SYSTEM))


def record_policy(app: ServiceApplication, default_overdraft_minutes: int) -> None:
    """Record the default overdraft limit in the log when it is new or has changed."""
    policy = app.find(BankPolicy.create_id(), BankPolicy)
    policy = policy or BankPolicy(default_overdraft_minutes)
    policy.set_default_overdraft(default_overdraft_minutes)
    # Another process may record it first; then the policy is recorded, which is enough.
    with contextlib.suppress(IntegrityError):
        app.save(policy)
