"""The federation file (federation.toml) that `timebank up` and `timebank demo` run from."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from shared.identifiers import InvalidBankId, check_bank_id
from shared.protocol import BankId

Minutes = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]


Port = Annotated[int, msgspec.Meta(ge=1, le=65_535)]


class ClearingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    deadline_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 30.0
    # The clearing house's HTTP port; unset: the port an earlier run used, or a free one.
    port: Port | None = None


class BankConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: BankId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    limit_minutes: Minutes
    # The bank's default overdraft per member (10 hours unless set).
    overdraft_limit_minutes: Minutes = 600
    # The bank's HTTP port; unset: the port an earlier run used, or a free one.
    port: Port | None = None


class FederationConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    banks: Annotated[list[BankConfig], msgspec.Meta(min_length=1)]
    clearing: ClearingConfig = ClearingConfig()
    # The NATS server's client port, when `up` runs its own; unset: as for the services.
    nats_port: Port | None = None
    # Where each service keeps its events: a store URL with {name} (the clearing house's
    # "clearing", or a bank's id) and/or {schema} (the same, with "-" as "_"), e.g.
    # "postgresql://timebank@db:5432/timebank?schema=tb_{schema}". Unset: SQLite files in
    # the data dir.
    store_template: str | None = None


class ConfigError(ValueError):
    """The federation file is unusable; the message names the file, the line and the problem."""


def load_config(path: Path) -> FederationConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        # Its message already says "(at line N, column M)".
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        config = msgspec.convert(raw, FederationConfig)
    except msgspec.ValidationError as e:
        line = _line_of(text, str(e))
        where = f"line {line}: " if line else ""
        raise ConfigError(f"{path}: {where}{e}") from None
    seen: dict[str, int] = {}
    for index, bank in enumerate(config.banks):
        line = _bank_header_lines(text)[index] if index < len(_bank_header_lines(text)) else 0
        try:
            check_bank_id(bank.id)
        except InvalidBankId as e:
            raise ConfigError(f"{path}: line {line}: {e}") from None
        if bank.id in seen:
            raise ConfigError(
                f"{path}: line {line}: bank id {bank.id!r} is used twice "
                f"(first at line {seen[bank.id]})"
            )
        seen[bank.id] = line
    return config


def _bank_header_lines(text: str) -> list[int]:
    return [
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip().startswith("[[banks]]")
    ]


def _line_of(text: str, error: str) -> int:
    """The line a validation error's path (``$.banks[1].limit_minutes``) points at, or 0."""
    lines = text.splitlines()
    if match := re.search(r"\$\.banks\[(\d+)\](?:\.(\w+))?", error):
        unknown = re.search(r"unknown field `(\w+)`", error)
        key = match.group(2) or (unknown.group(1) if unknown else None)
        return _bank_line(text, lines, int(match.group(1)), key)
    if match := re.search(r"\$\.clearing(?:\.(\w+))?", error):
        header = next((n for n, line in enumerate(lines, 1) if line.strip() == "[clearing]"), 0)
        # As before: the key's first line anywhere in the file, else the section's header.
        return _key_line(lines, match.group(1), 1, len(lines) + 1) or header
    return 0


def _bank_line(text: str, lines: list[str], index: int, key: str | None) -> int:
    """The line of ``key`` in the index-th [[banks]] table, or the table's header line."""
    headers = _bank_header_lines(text)
    if index >= len(headers):
        return 0
    start = headers[index]
    end = headers[index + 1] if index + 1 < len(headers) else len(lines) + 1
    return _key_line(lines, key, start + 1, end) or start


def _key_line(lines: list[str], key: str | None, start: int, end: int) -> int:
    """The first line numbered from ``start`` to before ``end`` that sets ``key``, or 0."""
    if key:
        for number in range(start, end):
            if re.match(rf"\s*{key}\s*=", lines[number - 1]):
                return number
    return 0
