"""At each start of `timebank up`: the clearing house's directory brought in line with the
config. A new bank is admitted; a bank whose name or limit changed gets them (PATCH); a bank
no longer in the config is suspended, with a warning, since its members may still hold
balances and positions that need settling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2 as httpx

from services.local.processes import FederationError
from shared.nats_users import public_nkey
from shared.signing import SigningKey

if TYPE_CHECKING:
    from services.local.federation import LocalFederation


@dataclass(frozen=True)
class ClearingAdmin:
    """The clearing house's API, called as its admin."""

    url: str
    token: str

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", headers=self._auth(), timeout=10)
        response.raise_for_status()
        return response.json()

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return httpx.request(method, self.url + path, json=body, headers=self._auth(), timeout=10)

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def reconcile_clearing(federation: LocalFederation, earlier_tokens: dict[str, str]) -> list[str]:
    """Admit, change and suspend at the clearing house; returns what was done or needs doing,
    a line each. ``earlier_tokens``: each bank's clearing token from an earlier run (an admitted
    bank's token is shown only once, at its admission)."""
    notes: list[str] = []
    clearing = federation.clearing_admin()
    listed = {bank["bank_id"]: bank for bank in clearing.get("/v1/banks")["banks"]}
    for bank_id, bank in federation.bank_configs.items():
        if bank_id in listed:
            federation.banks[bank_id].clearing_token = earlier_tokens.get(bank_id)
            notes += _apply_changes(federation, clearing, bank_id, listed[bank_id])
            continue
        body: dict[str, Any] = {
            "bank_id": bank_id,
            "name": bank.name,
            "limit_minutes": bank.limit_minutes,
            "public_key": SigningKey.load(federation.key_path(bank_id)).public_key,
        }
        if federation.nats is not None:
            body["nats_key"] = public_nkey(federation.seed_path(bank_id))
        response = clearing.call("POST", "/v1/banks", body)
        if response.status_code != 201:
            raise FederationError(f"admitting {bank_id} failed: {response.text}")
        federation.banks[bank_id].clearing_token = response.json()["clearing_token"]
    for bank_id, listing in listed.items():
        if bank_id not in federation.bank_configs and listing["status"] == "active":
            response = clearing.call("POST", f"/v1/banks/{bank_id}/suspend")
            if response.status_code != 200:
                raise FederationError(f"suspending {bank_id} failed: {response.text}")
            notes.append(
                f"warning: {bank_id} is no longer in the config, so it is now suspended at the "
                "clearing house: transfers to and from it abort (bank_suspended). Settle it "
                "(`timebank settle`), or put it back in the config and reinstate it "
                f"(POST /v1/banks/{bank_id}/reinstate)"
            )
    return notes


def _apply_changes(
    federation: LocalFederation, clearing: ClearingAdmin, bank_id: str, listed: dict[str, Any]
) -> list[str]:
    bank = federation.bank_configs[bank_id]
    changes: dict[str, Any] = {}
    if listed["name"] != bank.name:
        changes["name"] = bank.name
    if listed["limit_minutes"] != bank.limit_minutes:
        changes["limit_minutes"] = bank.limit_minutes
    notes = []
    if changes:
        response = clearing.call("PATCH", f"/v1/banks/{bank_id}", changes)
        if response.status_code != 200:
            raise FederationError(f"changing {bank_id} failed: {response.text}")
        said = ", ".join(f"{key} {listed[key]!r} -> {value!r}" for key, value in changes.items())
        notes.append(f"{bank_id}: applied the config's change at the clearing house: {said}")
    if listed["status"] != "active":
        notes.append(
            f"warning: {bank_id} is in the config but suspended at the clearing house; "
            f"reinstate it with POST /v1/banks/{bank_id}/reinstate"
        )
    return notes
