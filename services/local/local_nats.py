"""The NATS a federation on one host runs itself: one server, or a JetStream cluster of three
(every stream on all three nodes, as across hosts), each node stopped with `timebank up`."""

from __future__ import annotations

from pathlib import Path

from services.local.nats_cluster import NatsCluster
from services.local.nats_server import NatsServer


def local_nats(
    store_dir: Path, users_file: Path, port: int, cluster_size: int
) -> NatsServer | NatsCluster:
    """Not started yet: one server on ``port`` (0: picked), or a cluster of ``cluster_size``
    nodes, with the federation's users."""
    if cluster_size > 1:
        return NatsCluster(
            store_dir, users_file=users_file, size=cluster_size, die_with_parent=True
        )
    return NatsServer(store_dir, port=port, config_file=users_file, die_with_parent=True)


def restart_stopped(nats: NatsServer | NatsCluster) -> str:
    """Start again what of it has stopped (a crash); says what, in a line."""
    if isinstance(nats, NatsCluster):
        return f"NATS node {', '.join(nats.start_stopped())} had stopped; started again"
    nats.start()
    return f"NATS had stopped; started again at {nats.url}"
