"""Constants and builders the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

from services.ledger.settings import LedgerSettings

OPERATOR_TOKEN = "operator-" + "o" * 24
AUDITOR_TOKEN = "auditor-" + "a" * 24
BANK_ID = "rushey-green"


def make_settings(store_url: str, **kwargs: object) -> LedgerSettings:
    """A bank's settings as the CLI would build them, with both test tokens in the env."""
    environ = {"TIMEBANK_OPERATOR_TOKEN": OPERATOR_TOKEN, "TIMEBANK_AUDITOR_TOKEN": AUDITOR_TOKEN}
    return LedgerSettings.build(environ, bank_id=BANK_ID, store_url=store_url, **kwargs)  # type: ignore[arg-type]
