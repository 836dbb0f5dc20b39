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


class ClearingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    deadline_seconds: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 30.0


class BankConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: BankId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    limit_minutes: Minutes
    # The bank's default overdraft per member (10 hours unless set).
    overdraft_limit_minutes: Minutes = 600


class FederationConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    banks: Annotated[list[BankConfig], msgspec.Meta(min_length=1)]
    clearing: ClearingConfig = ClearingConfig()


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
    match = re.search(r"\$\.banks\[(\d+)\](?:\.(\w+))?", error)
    lines = text.splitlines()
    if match:
        headers = _bank_header_lines(text)
        index, key = int(match.group(1)), match.group(2)
        unknown = re.search(r"unknown field `(\w+)`", error)
        key = key or (unknown.group(1) if unknown else None)
        if index >= len(headers):
            return 0
        start = headers[index]
        end = headers[index + 1] if index + 1 < len(headers) else len(lines) + 1
        if key:
            for number in range(start + 1, end):
                if re.match(rf"\s*{key}\s*=", lines[number - 1]):
                    return number
        return start
    match = re.search(r"\$\.clearing(?:\.(\w+))?", error)
    if match:
        for number, line in enumerate(lines, start=1):
            key = match.group(1)
            if key and re.match(rf"\s*{key}\s*=", line):
                return number
        for number, line in enumerate(lines, start=1):
            if line.strip() == "[clearing]":
                return number
    return 0
