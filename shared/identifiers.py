"""Identifier rules that every party checks the same way: bank ids end up in NATS subjects."""

from __future__ import annotations

import re

# Lower-case letters, digits and inner hyphens: safe as a NATS subject token and a file name.
BANK_ID_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


# Names the bus gives to parties that are not banks.
RESERVED_IDS = frozenset({"clearing"})


class InvalidBankId(ValueError):
    pass


def check_bank_id(bank_id: str) -> str:
    if not BANK_ID_PATTERN.fullmatch(bank_id):
        raise InvalidBankId(
            f"bank id {bank_id!r} must be 1-32 lower-case letters, digits or inner hyphens"
        )
    if bank_id in RESERVED_IDS:
        raise InvalidBankId(f"bank id {bank_id!r} is reserved")
    return bank_id
