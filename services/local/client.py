"""Drive a running federation over its HTTP APIs, as its operators would, and check the design's
invariants (1-5) from what the APIs show. Used by `timebank demo` and the end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx

from services.ledger.domain_terms import (
    FEDERATION_ACCOUNT,
)
from shared.signing import SigningKey, confirmation_payload

SETTLE_SECONDS = 20.0


class RequestFailed(RuntimeError):
    """An API answered with an error where the caller needed a success."""


def problem_of(response: httpx.Response) -> str:
    """An error answer in one line: a problem's code and detail, else the start of its text."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict) and problem.get("code"):
        detail = " ".join(str(problem.get("detail") or problem.get("title") or "").split())
        return f"{problem['code']}: {detail}" if detail else str(problem["code"])
    text = " ".join(response.text.split())
    return text[:200] or response.reason_phrase


@dataclass
class FederationClient:
    """Talks to the services named in a ``federation.json`` description, with their tokens."""

    described: dict[str, Any]
    # Every transfer asked for through this client: id -> (payer bank, payee bank).
    transfers: dict[str, tuple[str, str]] = field(default_factory=dict)
    timeout: float = 10.0
    # One connection pool for every call (thread-safe): a client made per request costs tens
    # of milliseconds of CPU (its TLS context), which under load is most of a request's time.
    http: httpx.Client = field(default_factory=httpx.Client, repr=False)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FederationClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def bank(self, bank_id: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        bank = self.described["banks"][bank_id]
        headers = {"Authorization": f"Bearer {bank['operator_token']}"}
        return self.http.request(
            method, bank["url"] + path, headers=headers, timeout=self.timeout, **kwargs
        )

    def clearing_request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        clearing = self.described["clearing"]
        headers = {"Authorization": f"Bearer {clearing['admin_token']}"}
        return self.http.request(
            method, clearing["url"] + path, headers=headers, timeout=self.timeout, **kwargs
        )

    def clearing(self, path: str) -> Any:
        return self.ok(self.clearing_request("GET", path))

    @staticmethod
    def ok(response: httpx.Response) -> Any:
        """The answer's JSON; RequestFailed, in one line, for an error or an answer that is not
        JSON (something else serves at that URL)."""
        request = f"{response.request.method} {response.request.url}"
        if not response.is_success:
            raise RequestFailed(f"{request}: {response.status_code} {problem_of(response)}")
        try:
            return response.json()
        except ValueError:
            raise RequestFailed(
                f"{request}: {response.status_code} but not JSON; is a timebank service there?"
            ) from None

    def open_member(self, bank_id: str, member_id: str, name: str, **extra: Any) -> Any:
        body = {"member_id": member_id, "name": name, "kind": "person", **extra}
        return self.ok(self.bank(bank_id, "POST", "/v1/members", json=body))

    def member(self, bank_id: str, member_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self.ok(self.bank(bank_id, "GET", f"/v1/members/{member_id}"))
        return view

    def request_transfer(
        self,
        payer_bank: str,
        payer: str,
        to_bank: str,
        payee: str,
        minutes: int,
        memo: str,
        *,
        wait_for_bank: float = SETTLE_SECONDS,
    ) -> httpx.Response:
        """POST /v1/transfers; a 404 ``unknown_bank`` is retried for ``wait_for_bank`` seconds,
        until the clearing house's directory has reached the bank (a moment after start-up)."""
        body = {"payer": payer, "to_bank": to_bank, "payee": payee, "minutes": minutes,
                "memo": memo}  # fmt: skip
        deadline = time.monotonic() + wait_for_bank
        while True:
            response = self.bank(payer_bank, "POST", "/v1/transfers", json=body)
            unknown_bank = (
                response.status_code == 404 and response.json().get("code") == "unknown_bank"
            )
            if not unknown_bank or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if response.status_code == 202:
            self.transfers[response.json()["transfer_id"]] = (payer_bank, to_bank)
        return response

    def transfer(
        self, payer_bank: str, payer: str, to_bank: str, payee: str, minutes: int, memo: str
    ) -> str:
        """Ask for a transfer that the payer bank must accept; returns its id."""
        response = self.request_transfer(payer_bank, payer, to_bank, payee, minutes, memo)
        transfer_id: str = self.ok(response)["transfer_id"]
        return transfer_id

    def outcome(
        self, bank_id: str, transfer_id: str, seconds: float = SETTLE_SECONDS
    ) -> dict[str, Any]:
        """The transfer as the bank sees it, once decided (or still pending after ``seconds``)."""
        deadline = time.monotonic() + seconds
        while True:
            view: dict[str, Any] = self.ok(
                self.bank(bank_id, "GET", f"/v1/transfers/{transfer_id}")
            )
            if view["status"] != "pending" or time.monotonic() > deadline:
                return view
            time.sleep(0.05)

    def wait_until_settled(
        self, members: Mapping[str, Iterable[str]], seconds: float = SETTLE_SECONDS
    ) -> bool:
        """Until no account holds minutes and the clearing house reserves none: every decision
        applied everywhere. False if that did not happen in time."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            held = sum(
                self.member(bank_id, member_id)["held_minutes"]
                for bank_id, ids in members.items()
                for member_id in [*ids, FEDERATION_ACCOUNT]
            )
            reserved = sum(b["reserved_minutes"] for b in self.clearing("/v1/banks")["banks"])
            if held == 0 and reserved == 0:
                return True
            time.sleep(0.1)
        return False

    def open_settlement(self) -> dict[str, Any]:
        """POST /v1/settlements as the clearing house's admin: the cycle and its obligations."""
        cycle: dict[str, Any] = self.ok(self.clearing_request("POST", "/v1/settlements"))
        return cycle

    def confirm_obligation(
        self, settlement_id: int, number: int, creditor: str, key_file: Path | None = None
    ) -> httpx.Response:
        """The creditor bank, with its own clearing token and signed with its own key (its
        key file in federation.json unless given), confirms it was paid."""
        bank = self.described["banks"][creditor]
        key = SigningKey.load(key_file or Path(bank["signing_key"]))
        signature = key.sign(confirmation_payload(creditor, settlement_id, number))
        url = (
            f"{self.described['clearing']['url']}/v1/settlements/{settlement_id}"
            f"/obligations/{number}/confirm"
        )
        return self.http.post(
            url,
            json={"signature": signature},
            headers={"Authorization": f"Bearer {bank['clearing_token']}"},
            timeout=self.timeout,
        )

    def wait_until_mirrored(self, seconds: float = SETTLE_SECONDS) -> bool:
        """Until every bank's federation account mirrors its position at the clearing house
        (invariant 2): every decision and settlement applied. False if not in time."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            positions = self.clearing("/v1/positions")["positions"]
            if all(
                self.member(bank_id, FEDERATION_ACCOUNT)["balance_minutes"] == -position
                for bank_id, position in positions.items()
            ):
                return True
            time.sleep(0.1)
        return False

    def check_invariants(
        self, members: Mapping[str, Iterable[str]], expected: Mapping[str, str] | None = None
    ) -> list[str]:
        """Invariants 1-5 of the design, from the APIs; returns the broken ones, described.

        ``members`` names each bank's members to check; every transfer asked for through this
        client is checked, and those in ``expected`` must have ended as given there.
        """
        problems: list[str] = []
        banks = {b["bank_id"]: b for b in self.clearing("/v1/banks")["banks"]}
        problems += self._check_clearing(banks)
        for bank_id, ids in members.items():
            problems += self._check_bank(bank_id, banks[bank_id], ids)
        for transfer_id, (payer_bank, payee_bank) in self.transfers.items():
            problems += self._check_transfer(transfer_id, payer_bank, payee_bank, expected or {})
        return problems

    def _check_clearing(self, banks: Mapping[str, Mapping[str, int]]) -> list[str]:
        """Invariants 3 and 5 at the clearing house: positions sum to zero, no reservation is
        left, no bank owes more than its limit."""
        problems = []
        positions = self.clearing("/v1/positions")
        if positions["sum_minutes"] != 0 or sum(positions["positions"].values()) != 0:
            problems.append(f"3: positions sum to {positions['sum_minutes']}, not 0")
        for bank_id, bank in banks.items():
            if bank["reserved_minutes"] != 0:
                problems.append(f"5: {bank_id} still has {bank['reserved_minutes']} reserved")
            if bank["reserved_minutes"] - bank["position_minutes"] > bank["limit_minutes"]:
                problems.append(f"5: {bank_id} owes more than its limit")
        return problems

    def _check_bank(
        self, bank_id: str, at_clearing: Mapping[str, int], member_ids: Iterable[str]
    ) -> list[str]:
        """Invariants 1, 2 and 5 at one bank: its books balance, its federation account mirrors
        its position, no member is below its overdraft limit."""
        problems = []
        total = self.ok(self.bank(bank_id, "GET", "/v1/bank"))["total_posted_minutes"]
        if total != 0:
            problems.append(f"1: {bank_id}'s posted balances sum to {total}, not 0")
        federation = self.member(bank_id, FEDERATION_ACCOUNT)["balance_minutes"]
        if federation != -at_clearing["position_minutes"]:
            problems.append(
                f"2: {bank_id}'s federation account is {federation} but its position is "
                f"{at_clearing['position_minutes']}"
            )
        for member_id in member_ids:
            view = self.member(bank_id, member_id)
            if view["available_minutes"] < -view["overdraft_limit_minutes"]:
                problems.append(f"5: {member_id}@{bank_id} is below its overdraft limit")
        return problems

    def _check_transfer(
        self, transfer_id: str, payer_bank: str, payee_bank: str, expected: Mapping[str, str]
    ) -> list[str]:
        """Invariant 4: one outcome everywhere; a commit posted once at each bank, an abort
        nowhere."""
        problems = []
        at_payer = self.outcome(payer_bank, transfer_id, seconds=0)
        at_clearing = self.clearing(f"/v1/transfers/{transfer_id}")["status"]
        response = self.bank(payee_bank, "GET", f"/v1/transfers/{transfer_id}")
        # A payee bank is never asked about a transfer refused before it (bank limit, ...).
        at_payee = self.ok(response)["status"] if response.status_code != 404 else "aborted"
        statuses = {at_payer["status"], at_clearing, at_payee}
        want = expected.get(transfer_id)
        if len(statuses) != 1 or (want is not None and statuses != {want}):
            problems.append(
                f"4: transfer {transfer_id} is {at_payer['status']} at {payer_bank}, "
                f"{at_clearing} at the clearing house, {at_payee} at {payee_bank}"
                + (f"; expected {want}" if want else "")
            )
        posted_once = 1 if at_clearing == "committed" else 0
        for bank_id, member_id in (
            (payer_bank, at_payer["payer"]),
            (payee_bank, at_payer["payee"]),
        ):
            statement = self.bank(bank_id, "GET", f"/v1/members/{member_id}/statement")
            if statement.status_code == 404:
                continue  # an unknown payee: nothing can have been posted to it
            entries = [e for e in self.ok(statement)["entries"] if e["entry_id"] == transfer_id]
            if len(entries) != posted_once:
                problems.append(
                    f"4: transfer {transfer_id} has {len(entries)} posting(s) for "
                    f"{member_id}@{bank_id}; expected {posted_once}"
                )
        return problems
