"""Store URLs, ledger settings, bearer-token registry and idempotency helpers (no store opened)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.requests import Request

from services.clearing.settings import ADMIN_TOKEN_VAR, ClearingSettings
from services.common.auth import MIN_TOKEN_LENGTH, TokenRegistry, caller_of
from services.common.idempotency import (
    MAX_KEY_LENGTH,
    InvalidIdempotencyKey,
    check_key,
    fingerprint,
)
from services.common.problems import Problem
from services.common.stores import StoreURLError, parse_store_url
from services.ledger.settings import (
    AUDITOR_TOKEN_VAR,
    OPERATOR_TOKEN_VAR,
    LedgerSettings,
    SettingsError,
    default_store_url,
)
from shared.signing import SigningKey

OPERATOR = "operator-" + "o" * 24
AUDITOR = "auditor-" + "a" * 24


# Store URLs.


def test_sqlite_url_with_three_slashes_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = parse_store_url("sqlite:///data/bank.db")
    assert store.env == {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path.resolve() / "data" / "bank.db"),
    }


def test_sqlite_url_with_four_slashes_is_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    absolute = tmp_path.resolve() / "abs" / "bank.db"
    store = parse_store_url(f"sqlite:///{absolute}")
    assert f"sqlite:///{absolute}".startswith("sqlite:////")
    assert store.env["SQLITE_DBNAME"] == str(absolute)


def test_sqlite_store_prepare_creates_the_parent_directory(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "bank.db"
    store = parse_store_url(f"sqlite:///{target}")
    store.prepare()
    assert target.parent.is_dir()
    assert not target.exists()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite:///data/",
        "sqlite:///:memory:",
        "sqlite://host/bank.db",
    ],
)
def test_sqlite_url_naming_no_file_is_refused(url: str) -> None:
    with pytest.raises(StoreURLError):
        parse_store_url(url)


def test_postgresql_url_gives_user_password_host_port_database_and_schema() -> None:
    store = parse_store_url("postgresql://ledger:p%40ss%3Aword@db.example:6543/banks?schema=bank_a")
    assert store.env == {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": "banks",
        "POSTGRES_HOST": "db.example",
        "POSTGRES_PORT": "6543",
        "POSTGRES_USER": "ledger",
        "POSTGRES_PASSWORD": "p@ss:word",
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_SCHEMA": "bank_a",
    }


def test_postgresql_description_does_not_reveal_the_password() -> None:
    store = parse_store_url("postgresql://ledger:hunter2secret@db.example/banks")
    assert "hunter2secret" not in store.description
    assert "db.example" in store.description


def test_postgresql_url_defaults_user_port_and_schema() -> None:
    env = parse_store_url("postgres://db.example/banks").env
    assert (env["POSTGRES_USER"], env["POSTGRES_PORT"]) == ("postgres", "5432")
    assert (env["POSTGRES_PASSWORD"], env["POSTGRES_SCHEMA"]) == ("", "")


@pytest.mark.parametrize("schema", ["bank_a", "b", "_x", "a" * 63, "bank2"])
def test_postgresql_accepts_lower_case_schema_names(schema: str) -> None:
    store = parse_store_url(f"postgresql://db.example/banks?schema={schema}")
    assert store.env["POSTGRES_SCHEMA"] == schema


@pytest.mark.parametrize(
    "schema", ["Bank", "1bank", "bank-a", "bank;drop", "bank%20a", "a" * 64, "ba%22nk"]
)
def test_postgresql_refuses_unsafe_schema_names(schema: str) -> None:
    with pytest.raises(StoreURLError, match="schema"):
        parse_store_url(f"postgresql://db.example/banks?schema={schema}")


def test_postgresql_refuses_unknown_options_and_names_them() -> None:
    with pytest.raises(StoreURLError, match="sslmode"):
        parse_store_url("postgresql://db.example/banks?sslmode=require")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://db.example",
        "postgresql://db.example/",
        "postgresql:///banks",
        "postgresql://user@/banks",
    ],
)
def test_postgresql_url_without_database_or_host_is_refused(url: str) -> None:
    with pytest.raises(StoreURLError):
        parse_store_url(url)


@pytest.mark.parametrize("port", ["99999", "abc"])
def test_postgresql_url_with_an_invalid_port_is_refused(port: str) -> None:
    with pytest.raises(StoreURLError, match="port"):
        parse_store_url(f"postgresql://db.example:{port}/banks")


def test_memory_url_keeps_events_in_the_process() -> None:
    assert parse_store_url("memory://").env == {"PERSISTENCE_MODULE": "eventsourcing.popo"}


@pytest.mark.parametrize(
    "url", ["mysql://db.example/banks", "bank.db", "", "file:///tmp/bank.db", "http://x/y"]
)
def test_store_url_with_an_unsupported_scheme_is_refused(url: str) -> None:
    with pytest.raises(StoreURLError, match="scheme"):
        parse_store_url(url)


# Ledger settings.


def build(environ: dict[str, str], **kwargs: object) -> LedgerSettings:
    return LedgerSettings.build(environ, **{"bank_id": "rushey-green", **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize("environ", [{}, {OPERATOR_TOKEN_VAR: ""}, {AUDITOR_TOKEN_VAR: AUDITOR}])
def test_missing_operator_token_is_refused_naming_the_variable(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=OPERATOR_TOKEN_VAR):
        build(environ)


@pytest.mark.parametrize(
    "token",
    [
        "x" * (MIN_TOKEN_LENGTH - 1),
        "changeme",
        "password",
        # Padded to the minimum length, a placeholder is still a placeholder.
        "changeme".rjust(MIN_TOKEN_LENGTH),
        "Password".ljust(MIN_TOKEN_LENGTH + 4),
    ],
)
def test_short_or_placeholder_operator_token_is_refused(token: str) -> None:
    with pytest.raises(SettingsError, match=OPERATOR_TOKEN_VAR):
        build({OPERATOR_TOKEN_VAR: token})


def test_refusal_of_a_short_token_does_not_echo_it() -> None:
    token = "s3cr3t-but-short"[: MIN_TOKEN_LENGTH - 1]
    with pytest.raises(SettingsError) as refused:
        build({OPERATOR_TOKEN_VAR: token})
    assert token not in str(refused.value)


def test_operator_token_of_exactly_the_minimum_length_is_accepted() -> None:
    token = "k" * MIN_TOKEN_LENGTH
    assert build({OPERATOR_TOKEN_VAR: token}).tokens.role_of(token) == "operator"


def test_auditor_token_is_optional() -> None:
    settings = build({OPERATOR_TOKEN_VAR: OPERATOR})
    assert set(settings.tokens.digests) == {"operator"}
    assert settings.tokens.role_of(AUDITOR) is None


def test_both_tokens_give_their_roles() -> None:
    settings = build({OPERATOR_TOKEN_VAR: OPERATOR, AUDITOR_TOKEN_VAR: AUDITOR})
    assert settings.tokens.role_of(OPERATOR) == "operator"
    assert settings.tokens.role_of(AUDITOR) == "auditor"


def test_auditor_token_equal_to_the_operators_is_refused() -> None:
    with pytest.raises(SettingsError, match=AUDITOR_TOKEN_VAR):
        build({OPERATOR_TOKEN_VAR: OPERATOR, AUDITOR_TOKEN_VAR: OPERATOR})


def test_short_auditor_token_is_refused_naming_its_variable() -> None:
    with pytest.raises(SettingsError, match=AUDITOR_TOKEN_VAR):
        build({OPERATOR_TOKEN_VAR: OPERATOR, AUDITOR_TOKEN_VAR: "short"})


@pytest.mark.parametrize("token", [" " * MIN_TOKEN_LENGTH, f"  {OPERATOR}\n"])
def test_a_token_the_settings_accept_can_authenticate(token: str) -> None:
    try:
        settings = build({OPERATOR_TOKEN_VAR: token})
    except SettingsError:
        return
    request = Request({"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]})
    try:
        role = caller_of(request, settings.tokens).role
    except Problem as e:
        pytest.fail(f"accepted token {token!r} is refused with {e.status} {e.code}")
    assert role == "operator"


@pytest.mark.parametrize("bank_id", ["", "Rushey", "-rushey", "rushey-", "rushey_green", "a" * 33])
def test_bad_bank_id_is_refused(bank_id: str) -> None:
    with pytest.raises(SettingsError, match="bank id"):
        build({OPERATOR_TOKEN_VAR: OPERATOR}, bank_id=bank_id)


def test_default_store_is_a_sqlite_file_in_the_cwd_named_after_the_bank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = build({OPERATOR_TOKEN_VAR: OPERATOR}, bank_id="lewisham")
    assert settings.store_url == default_store_url("lewisham")
    dbname = parse_store_url(settings.store_url).env["SQLITE_DBNAME"]
    assert dbname == str(tmp_path.resolve() / "lewisham.ledger.db")


def test_explicit_store_url_is_kept() -> None:
    settings = build({OPERATOR_TOKEN_VAR: OPERATOR}, store_url="memory://")
    assert settings.store_url == "memory://"


def test_unusable_store_url_is_refused_as_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="scheme"):
        build({OPERATOR_TOKEN_VAR: OPERATOR}, store_url="mysql://db/banks")


def test_limits_are_checked_and_kept() -> None:
    settings = build(
        {OPERATOR_TOKEN_VAR: OPERATOR}, default_overdraft_minutes=0, max_exchange_minutes=1
    )
    assert (settings.default_overdraft_minutes, settings.max_exchange_minutes) == (0, 1)
    with pytest.raises(SettingsError, match="overdraft"):
        build({OPERATOR_TOKEN_VAR: OPERATOR}, default_overdraft_minutes=-1)
    with pytest.raises(SettingsError, match="maximum"):
        build({OPERATOR_TOKEN_VAR: OPERATOR}, max_exchange_minutes=0)


# Keys on the bus.


@pytest.fixture
def bank_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "bank.key"
    SigningKey.generate().save(path)
    return path


def test_a_bank_on_the_bus_needs_its_key_and_the_clearing_houses(bank_key_file: Path) -> None:
    environ = {OPERATOR_TOKEN_VAR: OPERATOR}
    url = "nats://127.0.0.1:4222"
    clearing_key = SigningKey.generate().public_key
    with pytest.raises(SettingsError, match="--signing-key"):
        build(environ, nats_url=url, clearing_key=clearing_key)
    with pytest.raises(SettingsError, match="--clearing-key"):
        build(environ, nats_url=url, signing_key_path=bank_key_file)
    with pytest.raises(SettingsError, match="--clearing-key: public_key must be base64"):
        build(environ, nats_url=url, signing_key_path=bank_key_file, clearing_key="not a key!")
    settings = build(
        environ, nats_url=url, signing_key_path=bank_key_file, clearing_key=clearing_key
    )
    assert settings.bus_link is not None
    assert settings.bus_link[2] == clearing_key
    # Alone (no NATS), a bank needs neither.
    assert build(environ).bus_link is None


def test_the_clearing_house_on_the_bus_needs_its_key(bank_key_file: Path) -> None:
    environ = {ADMIN_TOKEN_VAR: OPERATOR}
    with pytest.raises(SettingsError, match="--signing-key"):
        ClearingSettings.build(environ, store_url="memory://", nats_url="nats://127.0.0.1:1")
    settings = ClearingSettings.build(
        environ, store_url="memory://", nats_url="nats://127.0.0.1:1",
        signing_key_path=bank_key_file,
    )  # fmt: skip
    assert settings.bus_link is not None


# Token registry.


def test_registry_finds_the_role_of_each_token() -> None:
    registry = TokenRegistry.from_tokens({"operator": OPERATOR, "auditor": AUDITOR})
    assert registry.role_of(OPERATOR) == "operator"
    assert registry.role_of(AUDITOR) == "auditor"


@pytest.mark.parametrize("presented", ["", OPERATOR[:-1], OPERATOR + "x", OPERATOR.upper()])
def test_registry_gives_no_role_for_a_wrong_token(presented: str) -> None:
    registry = TokenRegistry.from_tokens({"operator": OPERATOR, "auditor": AUDITOR})
    assert registry.role_of(presented) is None


def test_registry_skips_roles_without_a_token() -> None:
    registry = TokenRegistry.from_tokens({"operator": OPERATOR, "auditor": None, "admin": ""})
    assert set(registry.digests) == {"operator"}
    assert registry.role_of("") is None


def test_registry_holds_digests_only_never_the_plaintext() -> None:
    registry = TokenRegistry.from_tokens({"operator": OPERATOR, "auditor": AUDITOR})
    for token in (OPERATOR, AUDITOR):
        assert token not in repr(registry)
        for stored in registry.digests.values():
            assert token.encode() not in stored
            # A SHA-256 digest, not an encoding of the token.
            assert len(stored) == 32


# Idempotency helpers.


def test_fingerprint_is_stable_under_key_order() -> None:
    one = {"payer": "ann", "payee": "bob", "minutes": 60, "extra": {"a": 1, "b": [1, 2]}}
    other = {"extra": {"b": [1, 2], "a": 1}, "minutes": 60, "payee": "bob", "payer": "ann"}
    assert fingerprint("exchange", one) == fingerprint("exchange", other)


@pytest.mark.parametrize(
    "changed",
    [
        {"payer": "ann", "payee": "bob", "minutes": 61},
        {"payer": "bob", "payee": "ann", "minutes": 60},
        {"payer": "ann", "payee": "bob", "minutes": "60"},
        {"payer": "ann", "payee": "bob", "minutes": 60, "memo": ""},
    ],
)
def test_fingerprint_differs_for_another_body(changed: dict[str, object]) -> None:
    body = {"payer": "ann", "payee": "bob", "minutes": 60}
    assert fingerprint("exchange", body) != fingerprint("exchange", changed)


def test_fingerprint_differs_for_another_operation() -> None:
    body = {"member_id": "ann"}
    assert fingerprint("open_member", body) != fingerprint("exchange", body)


@pytest.mark.parametrize("key", ["k", "a" * MAX_KEY_LENGTH, "order-42/retry 1", "~!@#$%^&*()"])
def test_check_key_accepts_1_to_max_printable_ascii_characters(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    "key", ["", "a" * (MAX_KEY_LENGTH + 1), "clé", "key\n", "key\t1", "key\x00", "key\x7f", "ключ"]
)
def test_check_key_refuses_empty_overlong_non_ascii_or_control_characters(key: str) -> None:
    with pytest.raises(InvalidIdempotencyKey):
        check_key(key)


@pytest.mark.parametrize(
    "token",
    [" " * MIN_TOKEN_LENGTH, f"  {OPERATOR}\n", f"{OPERATOR} suffix", f'"{OPERATOR}"'],
)
def test_token_that_could_not_be_sent_as_a_bearer_token_is_refused(token: str) -> None:
    with pytest.raises(SettingsError, match="no spaces or quotes"):
        build({OPERATOR_TOKEN_VAR: token})


def test_store_repr_does_not_reveal_the_password() -> None:
    store = parse_store_url("postgresql://bank:s3cret-pw@db.internal:5432/timebank")

    assert "s3cret-pw" not in repr(store)


def test_the_clearing_houses_bus_name_is_reserved_for_banks() -> None:
    from shared.identifiers import InvalidBankId, check_bank_id
    from shared.protocol import CLEARING

    with pytest.raises(InvalidBankId, match="reserved"):
        check_bank_id(CLEARING)
