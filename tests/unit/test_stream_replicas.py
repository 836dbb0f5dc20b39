"""A cluster's URL list and the streams' replicas: how they are checked and where they go (no
server needed; tests/integration/test_nats_cluster_streams.py runs them on a real cluster)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.clearing.settings import ADMIN_TOKEN_VAR, ClearingSettings
from services.cli import app
from services.common.settings import SettingsError, bus_settings
from shared.bus import Bus, InvalidStreamReplicas, server_urls

ADMIN = "admin-" + "a" * 26


def test_a_url_list_names_each_server_once_spaces_and_empty_entries_aside() -> None:
    assert server_urls("nats://a:4222, nats://b:4222,,nats://c:4222,") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]
    assert server_urls("tls://one:4222") == ["tls://one:4222"]


def test_every_server_of_a_url_list_must_be_a_nats_url() -> None:
    assert bus_settings("nats://a:4222,tls://b:4222", "tb") == Bus("tb")
    for url in ("nats://a:4222,http://b:4222", ",", "nats://a:4222,b:4222"):
        with pytest.raises(SettingsError, match="must start with nats:// or tls://"):
            bus_settings(url, "tb")


def test_streams_are_kept_on_one_server_unless_told_otherwise() -> None:
    assert Bus().stream_replicas == 1
    assert Bus("tb", stream_replicas=3).stream_replicas == 3


@pytest.mark.parametrize("replicas", [0, -1, 6])
def test_a_stream_is_kept_on_one_to_five_servers(replicas: int) -> None:
    with pytest.raises(InvalidStreamReplicas, match="between 1 and 5"):
        Bus("tb", stream_replicas=replicas)


def test_the_clearing_houses_setting_reaches_its_bus() -> None:
    environ = {ADMIN_TOKEN_VAR: ADMIN}
    assert ClearingSettings.build(environ, store_url="memory://").bus.stream_replicas == 1
    settings = ClearingSettings.build(
        environ, store_url="memory://", nats_namespace="fed", stream_replicas=3
    )
    assert settings.bus == Bus("fed", stream_replicas=3)
    with pytest.raises(SettingsError, match="--stream-replicas 9: a stream is kept on 1 to 5"):
        ClearingSettings.build(environ, store_url="memory://", stream_replicas=9)


def test_clearing_serve_refuses_replicas_out_of_range_in_one_line() -> None:
    result = CliRunner().invoke(
        app,
        ["clearing", "serve", "--store", "memory://", "--stream-replicas", "0"],
        env={ADMIN_TOKEN_VAR: ADMIN},
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --stream-replicas 0: a stream is kept on 1 to 5 NATS servers (1 on a single "
        "server, 3 on a cluster of three)"
    ]
