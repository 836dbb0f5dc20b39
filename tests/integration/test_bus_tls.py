"""TLS to NATS between hosts, on a real nats-server that demands it and checks client
certificates: a throwaway CA made with `cryptography`, a server and a client certificate."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from pathlib import Path

import nats
import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.common.settings import SettingsError, nats_tls_options
from services.local.nats_server import NatsServer
from shared.bus import connect

pytestmark = pytest.mark.timeout(60)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path) -> None:
    """ca.pem; server.pem/.key for 127.0.0.1; client.pem/.key (a bank's)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("timebank test CA"))
        .issuer_name(_name("timebank test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca", ca_key, ca)
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    for name, extension in (
        ("server", x509.SubjectAlternativeName([loopback])),
        ("client", x509.SubjectAlternativeName([x509.DNSName("gp.bank.test")])),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(extension, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(directory / name, key, cert)


@pytest.fixture
def tls_server(tmp_path: Path) -> NatsServer:
    make_pki(tmp_path)
    config = tmp_path / "tls.conf"
    config.write_text(
        "tls {\n"
        f'  cert_file: "{tmp_path / "server.pem"}"\n'
        f'  key_file: "{tmp_path / "server.key"}"\n'
        f'  ca_file: "{tmp_path / "ca.pem"}"\n'
        "  verify: true\n"
        "}\n"
    )
    return NatsServer(tmp_path / "nats", config_file=config)


def test_a_participant_with_the_ca_and_its_certificate_talks_over_tls(
    tls_server: NatsServer, tmp_path: Path
) -> None:
    with tls_server as server:
        context = nats_tls_options(tmp_path / "ca.pem", tmp_path / "client.pem",
                                   tmp_path / "client.key")  # fmt: skip

        async def main() -> None:
            nc = await connect(server.url, "test-tls", tls=context)
            subscription = await nc.subscribe("hello")
            await nc.publish("hello", b"over tls")
            message = await subscription.next_msg(timeout=5)
            assert message.data == b"over tls"
            await nc.close()

        asyncio.run(main())


def test_without_tls_or_without_a_client_certificate_no_one_connects(
    tls_server: NatsServer, tmp_path: Path
) -> None:
    with tls_server as server:
        no_client_cert = nats_tls_options(tmp_path / "ca.pem", None, None)

        async def main() -> None:
            for tls in (None, no_client_cert):
                with pytest.raises((nats.errors.Error, OSError)):
                    await nats.connect(
                        server.url, tls=tls, allow_reconnect=False, connect_timeout=2
                    )

        asyncio.run(main())


def test_tls_options_that_cannot_work_are_refused_in_one_line(tmp_path: Path) -> None:
    make_pki(tmp_path)
    assert nats_tls_options(None, None, None) is None
    with pytest.raises(SettingsError, match="need --nats-tls-ca"):
        nats_tls_options(None, tmp_path / "client.pem", tmp_path / "client.key")
    with pytest.raises(SettingsError, match="go together"):
        nats_tls_options(tmp_path / "ca.pem", tmp_path / "client.pem", None)
    with pytest.raises(SettingsError, match="cannot use the certificates"):
        nats_tls_options(tmp_path / "missing.pem", None, None)
    with pytest.raises(SettingsError, match="cannot use the certificates"):
        nats_tls_options(tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "ca.key")
