"""The compose deployment, checked without a Docker engine: docker-compose.yml against the
Compose Specification's JSON schema, every file and variable it reads made by
`timebank deploy init`, the NATS configs checked by nats-server itself, the banks admitted by
`timebank deploy admit` against a real clearing house, and the image's entry point."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jsonschema
import psycopg
import pytest
import yaml

from services.common.stores import parse_store_url
from services.local.nats_server import find_nats_server

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "deploy" / "compose-spec.json"
TIMEBANK = Path(sys.executable).parent / "timebank"
BANKS = ("rushey-green", "lewisham-college", "deptford-community")
# ${NAME}, ${NAME:?error} or ${NAME:-default}, as compose interpolates them.
REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([?-])([^}]*))?\}")


def run_timebank(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TIMEBANK), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A folder made by `timebank deploy init`, as an operator would."""
    out = tmp_path / "deploy"
    done = run_timebank("deploy", "init", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"docker compose --env-file {out}/compose.env up -d --build" in done.stdout
    return out


def env_file(path: Path) -> dict[str, str]:
    """A compose env file: NAME=value lines, a single-quoted value taken literally."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            if len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1]
            values[name] = value
    return values


def interpolated(text: str, values: dict[str, str]) -> str:
    """The compose file as compose reads it with these values: a missing required variable is
    an error, as it is for compose."""

    def value(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        if values.get(name):
            return values[name]
        if kind == "-":
            return default
        raise KeyError(f"{name} is not set: {default}")

    return REFERENCE.sub(value, text.replace("$$", "\0")).replace("\0", "$")


def compose(deployment: Path) -> dict[str, Any]:
    text = interpolated(COMPOSE.read_text(), env_file(deployment / "compose.env"))
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def schema_errors(document: Any) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_the_compose_file_follows_the_compose_specification(deployment: Path) -> None:
    document = compose(deployment)
    assert schema_errors(document) == []
    # The schema is the 2020-12 one, and it does refuse what compose would.
    assert json.loads(SCHEMA.read_text())["$schema"].endswith("2020-12/schema")
    document["services"]["clearing"]["healthcheck"]["interval"] = 2
    document["services"]["clearing"]["restart_policy"] = "always"
    assert len(schema_errors(document)) == 2


def test_every_file_and_variable_the_compose_file_reads_is_made_by_deploy_init(
    deployment: Path,
) -> None:
    values = env_file(deployment / "compose.env")
    referenced = {match[0] for match in REFERENCE.findall(COMPOSE.read_text())}
    assert referenced - set(values) == set()
    assert values["TIMEBANK_DEPLOY_DIR"] == str(deployment.resolve())
    document = compose(deployment)
    for name, secret in document["secrets"].items():
        assert Path(secret["file"]).is_file(), f"secret {name}: {secret['file']} is missing"
    for name, service in document["services"].items():
        for used in service.get("secrets", []):
            assert used["source"] in document["secrets"], f"{name} uses {used['source']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).is_dir(), f"{name} mounts {source}, which is missing"
            else:
                assert source in document["volumes"], f"{name} mounts {source}"
    # Every bank of the compose file is in the admissions, with its keys.
    admissions = json.loads((deployment / "admissions.json").read_text())["banks"]
    assert [bank["bank_id"] for bank in admissions] == list(BANKS)
    assert {f"bank-{bank}" for bank in BANKS} <= set(document["services"])


def test_every_service_has_a_healthcheck_and_no_secret_is_in_the_compose_file(
    deployment: Path,
) -> None:
    document = compose(deployment)
    for name, service in document["services"].items():
        if service.get("restart") == "no":  # a one-shot job: others wait for it to end
            continue
        assert service["healthcheck"]["test"][0] == "CMD", name
    files = list((deployment / "secrets").iterdir())
    assert len(files) == 1 + 5 * (1 + len(BANKS))
    text = json.dumps(document) + (deployment / "compose.env").read_text()
    for path in files:
        secret = path.read_text().strip()
        if path.suffix == ".pgpass":
            secret = secret.split(":")[-1]
        elif path.suffix == ".key":  # a PEM file: its key is the middle line
            secret = secret.splitlines()[1]
        assert secret not in text, f"{path.name} is in the compose file or compose.env"
    # The timebank services run as the owner of the files, who alone may read them.
    assert document["services"]["clearing"]["user"] == f"{os.getuid()}:{os.getgid()}"


def test_deploy_init_makes_secrets_for_their_owner_only_and_never_overwrites_one(
    deployment: Path,
) -> None:
    files = sorted(p for p in deployment.rglob("*") if p.is_file())
    assert len(files) == 27
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    before = {path: path.read_bytes() for path in files}
    token = deployment / "secrets" / "rushey-green.operator-token"
    token.unlink()

    again = run_timebank("deploy", "init", "--out", str(deployment))

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == f"{deployment}: made 1 file(s), kept 26"
    after = {path: path.read_bytes() for path in files}
    assert after.pop(token) != before.pop(token)
    assert after == before


def test_a_kept_key_that_is_not_one_is_refused_in_one_line(deployment: Path) -> None:
    (deployment / "secrets" / "rushey-green.key").write_text("not a key\n")
    done = run_timebank("deploy", "init", "--out", str(deployment))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {deployment / 'secrets'} holds a key that cannot be used: ")


def test_the_nats_nodes_configs_are_valid_for_nats_server_and_route_to_each_other(
    deployment: Path,
) -> None:
    password = (deployment / "secrets" / "nats-route-password").read_text()
    for node in ("nats-1", "nats-2", "nats-3"):
        config = deployment / "nats" / f"{node}.conf"
        checked = subprocess.run(
            [str(find_nats_server()), "-t", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
        text = config.read_text()
        assert f'server_name: "{node}"' in text
        assert 'include "nats-auth.conf"' in text
        for other in ("nats-1", "nats-2", "nats-3"):
            assert f"nats-route://route:{password}@{other}:6222" in text
    # Each bank's NATS user, the one it is admitted with, is on every node.
    users = (deployment / "nats" / "nats-auth.conf").read_text()
    for bank in json.loads((deployment / "admissions.json").read_text())["banks"]:
        assert f'"nkey": "{bank["nats_key"]}"' in users


def test_bad_nats_hosts_are_refused_in_one_line(tmp_path: Path) -> None:
    done = run_timebank("deploy", "init", "--out", str(tmp_path / "d"), "--nats-hosts", "a,b")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --nats-hosts: give 3 host names, comma-separated (e.g. nats-1,nats-2,nats-3)"
    ]
    assert not (tmp_path / "d").exists()


def test_nats_hosts_name_the_nodes_for_clients_and_routes(tmp_path: Path) -> None:
    hosts = "nats.gp.example,nats.college.example,nats.community.example"
    done = run_timebank("deploy", "init", "--out", str(tmp_path / "d"), "--nats-hosts", hosts)
    assert done.returncode == 0, done.stderr
    values = env_file(tmp_path / "d" / "compose.env")
    assert values["TIMEBANK_NATS_URL"] == ",".join(f"nats://{h}:4222" for h in hosts.split(","))
    node = (tmp_path / "d" / "nats" / "nats-2.conf").read_text()
    assert 'advertise: "nats.college.example:6222"' in node
    assert 'client_advertise: "nats.college.example:4222"' in node


@pytest.mark.postgres
def test_a_services_database_password_reaches_libpq_from_its_pgpass_file(
    deployment: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compose file gives each store URL without a password, and PGPASSFILE."""
    monkeypatch.setenv("PGPASSFILE", str(deployment / "secrets" / "clearing.pgpass"))
    password = (deployment / "secrets" / "clearing.db-password").read_text().strip()
    with psycopg.connect(parse_store_url(postgres_url).postgres_conninfo()) as conn:
        assert conn.info.password == password


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def clearing(deployment: Path, tmp_path: Path) -> Iterator[str]:
    """A real clearing house with the deployment's admin token; its URL."""
    port = free_port()
    token = (deployment / "secrets" / "clearing.admin-token").read_text().strip()
    with (tmp_path / "clearing.log").open("wb") as log:
        process = subprocess.Popen(
            [str(TIMEBANK), "clearing", "serve", "--port", str(port),
             "--store", f"sqlite:///{tmp_path / 'clearing.db'}"],
            env={**os.environ, "TIMEBANK_ADMIN_TOKEN": token},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "clearing.log").read_text()
            assert time.monotonic() < deadline, "the clearing house did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_deploy_admit_admits_each_bank_once_and_keeps_its_clearing_token(
    deployment: Path, clearing: str
) -> None:
    done = run_timebank("deploy", "admit", "--dir", str(deployment), "--clearing-url", clearing)
    assert done.returncode == 0, done.stderr
    tokens = deployment / "tokens"
    assert done.stdout.splitlines() == [
        f"{bank}: admitted; its clearing token is in {tokens / f'{bank}.clearing-token'}"
        for bank in BANKS
    ]
    admin = (deployment / "secrets" / "clearing.admin-token").read_text().strip()
    listed = httpx.get(f"{clearing}/v1/banks", headers={"Authorization": f"Bearer {admin}"})
    admissions = json.loads((deployment / "admissions.json").read_text())["banks"]
    assert [
        {key: bank[key] for key in ("bank_id", "name", "limit_minutes", "nats_key")}
        for bank in listed.json()["banks"]
    ] == [{key: bank[key] for key in ("bank_id", "name", "limit_minutes", "nats_key")}
          for bank in admissions]  # fmt: skip
    for bank in BANKS:
        token = tokens / f"{bank}.clearing-token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        # The token is the bank's at the clearing house: known there (no such cycle, yet).
        confirm = f"{clearing}/v1/settlements/1/obligations/1/confirm"
        for presented, status in ((token.read_text().strip(), 404), ("not-its-token", 401)):
            answer = httpx.post(
                confirm,
                json={"signature": "x"},
                headers={"Authorization": f"Bearer {presented}"},
            )
            assert answer.status_code == status, answer.text
    kept = {bank: (tokens / f"{bank}.clearing-token").read_text() for bank in BANKS}

    again = run_timebank("deploy", "admit", "--dir", str(deployment), "--clearing-url", clearing)

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [f"{bank}: already admitted" for bank in BANKS]
    assert {bank: (tokens / f"{bank}.clearing-token").read_text() for bank in BANKS} == kept


def test_deploy_admit_says_in_one_line_when_the_clearing_house_cannot_be_reached(
    deployment: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = run_timebank("deploy", "admit", "--dir", str(deployment), "--clearing-url", url)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: GET {url}/v1/banks: ")


def test_deploy_admit_refuses_an_admissions_file_it_cannot_use_in_one_line(
    deployment: Path,
) -> None:
    (deployment / "admissions.json").write_text('{"banks": [1]}')
    url = f"http://127.0.0.1:{free_port()}"
    done = run_timebank("deploy", "admit", "--dir", str(deployment), "--clearing-url", url)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {deployment / 'admissions.json'}: each bank must be an object with a bank_id"
    ]


def test_the_images_entry_point_reads_each_token_from_its_file(tmp_path: Path) -> None:
    """The token reaches the service's environment, never its command line."""
    (tmp_path / "admin-token").write_text("admin-token-from-a-file\n")
    fake = tmp_path / "bin" / "timebank"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$*|$TIMEBANK_ADMIN_TOKEN|${TIMEBANK_ADMIN_TOKEN_FILE:-}"\n')
    fake.chmod(0o755)
    done = subprocess.run(
        ["sh", str(ROOT / "deploy" / "entrypoint.sh"), "clearing", "serve"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
        env={
            "PATH": f"{fake.parent}:/usr/bin:/bin",
            "TIMEBANK_ADMIN_TOKEN_FILE": str(tmp_path / "admin-token"),
        },
    )
    assert done.stdout == "clearing serve|admin-token-from-a-file|\n"


def test_the_image_copies_files_that_exist_and_runs_as_a_user_of_its_own() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile.splitlines()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{source} is copied but does not exist"
    # What the package build takes from deploy/ is copied into the image.
    for template in ("nats-auth.conf.template", "nats-cluster.conf.template"):
        assert f"deploy/{template}" in dockerfile
        assert f'"deploy/{template}"' in (ROOT / "pyproject.toml").read_text()
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users == ["timebank"]
