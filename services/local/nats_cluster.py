"""A NATS JetStream cluster of three nodes: its config from deploy/nats-cluster.conf.template
(for `timebank deploy init` too), and three nats-servers run on one machine, for tests."""

from __future__ import annotations

import json
import logging
import secrets
import string
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from services.local.nats_config import deploy_template
from services.local.nats_server import NatsServer, NatsServerError, free_ports

log = logging.getLogger(__name__)

TEMPLATE = "nats-cluster.conf.template"
CLUSTER_SIZE = 3
ROUTE_USER = "route"
READY_POLL_SECONDS = 0.1
# Monitoring answers on loopback at once, or the node is not ready.
MONITOR_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class ClusterNode:
    """Where one node is: its name, the address the others and clients reach it at, and its
    client, route (cluster) and monitoring ports."""

    name: str
    host: str
    client_port: int
    cluster_port: int
    monitor_port: int

    @property
    def client_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"


def route_url(node: ClusterNode, password: str) -> str:
    return f"nats-route://{ROUTE_USER}:{password}@{node.host}:{node.cluster_port}"


def node_config(
    node: ClusterNode,
    nodes: list[ClusterNode],
    *,
    store_dir: str | None,
    route_password: str,
    listen_host: str,
    monitor_host: str | None = None,
    cluster_name: str = "timebank",
    users_file: str | None = None,
) -> str:
    """One node's nats-server config: its ports on ``listen_host``, routes to every node
    (itself included; nats-server skips its own), and the users' file included when given
    (a name in the same folder: nats-server resolves an include from the including file).
    Monitoring listens on ``monitor_host`` (``listen_host`` unless given). Without
    ``store_dir`` it is given on the command line (NatsServer's -sd: nats-server refuses it
    twice)."""
    users = f"include {json.dumps(users_file)}" if users_file else "# No users: anyone may connect."
    store = f"store_dir: {json.dumps(store_dir)}" if store_dir else "# store_dir: given with -sd"
    return string.Template(deploy_template(TEMPLATE)).substitute(
        server_name=json.dumps(node.name),
        listen=json.dumps(f"{listen_host}:{node.client_port}"),
        client_advertise=json.dumps(f"{node.host}:{node.client_port}"),
        monitor=json.dumps(f"{monitor_host or listen_host}:{node.monitor_port}"),
        store_dir=store,
        cluster_name=json.dumps(cluster_name),
        cluster_listen=json.dumps(f"{listen_host}:{node.cluster_port}"),
        cluster_advertise=json.dumps(f"{node.host}:{node.cluster_port}"),
        route_user=json.dumps(ROUTE_USER),
        route_password=json.dumps(route_password),
        routes=json.dumps([route_url(other, route_password) for other in nodes]),
        users=users,
    )


class NatsCluster:
    """Three nats-servers on loopback as one JetStream cluster, each a NatsServer (so started,
    stopped, killed and restarted as one server is), data under ``base_dir/<node>``.

    ``url`` lists every node's client URL, comma-separated (as ``--nats-url`` takes it). With
    ``users_file`` (services/local/nats_config.py) every node has the same users; the nodes'
    configs are written beside it, since they include it by name.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        users_file: Path | None = None,
        host: str = "127.0.0.1",
        name: str = "timebank",
        size: int = CLUSTER_SIZE,
        die_with_parent: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir)
        # As NatsServer's: each node stopped by Linux when the thread that started it ends.
        self.die_with_parent = die_with_parent
        self.users_file = users_file
        self.host = host
        self.name = name
        self.size = size
        # Made once, so a node started again rejoins with what the others know.
        self._route_password = secrets.token_urlsafe(24)
        self.nodes: list[ClusterNode] = []
        self.servers: list[NatsServer] = []

    @property
    def url(self) -> str:
        if not self.nodes:
            raise NatsServerError("the ports are picked by start(): start the cluster first")
        return ",".join(node.client_url for node in self.nodes)

    def start(self, timeout: float = 30.0) -> None:
        """Start every node and return once the cluster has a JetStream meta leader and every
        node is current."""
        if not self.servers:
            self._configure()
        try:
            for server in self.servers:
                server.start(timeout)
            self.wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _configure(self) -> None:
        ports = free_ports(self.host, 3 * self.size)
        self.nodes = [
            ClusterNode(f"{self.name}-{i + 1}", self.host, *ports[3 * i : 3 * i + 3])
            for i in range(self.size)
        ]
        config_dir = self.users_file.parent if self.users_file else self.base_dir
        config_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            store_dir = self.base_dir / node.name
            config = config_dir / f"{node.name}.conf"
            config.write_text(
                node_config(
                    node,
                    self.nodes,
                    store_dir=None,
                    route_password=self._route_password,
                    listen_host=self.host,
                    cluster_name=self.name,
                    users_file=self.users_file.name if self.users_file else None,
                )
            )
            # It holds the routes' password.
            config.chmod(0o600)
            self.servers.append(
                NatsServer(
                    store_dir,
                    host=self.host,
                    port=node.client_port,
                    monitor_port=node.monitor_port,
                    name=node.name,
                    config_file=config,
                    die_with_parent=self.die_with_parent,
                )
            )

    def stop(self, timeout: float = 10.0) -> None:
        for server in self.servers:
            server.stop(timeout)

    def stop_node(self, index: int, *, kill: bool = False) -> None:
        """Stop one node: cleanly (SIGTERM), or at once (SIGKILL) as a crash would."""
        server = self.servers[index]
        if kill:
            server.kill()
        else:
            server.stop()

    def start_node(self, index: int, timeout: float = 30.0) -> None:
        """Start a stopped node again, on its ports and data, and wait until it has caught up."""
        self.servers[index].start(timeout)
        self.wait_until_ready(timeout)

    @property
    def running(self) -> bool:
        """Whether every node runs."""
        return bool(self.servers) and all(server.running for server in self.servers)

    def start_stopped(self, timeout: float = 30.0) -> list[str]:
        """Start again every node that is not running (a crash); returns their names."""
        stopped = [i for i, server in enumerate(self.servers) if not server.running]
        for index in stopped:
            self.start_node(index, timeout)
        return [self.servers[i].name for i in stopped]

    def reload(self) -> None:
        """Make every running node read its config again (the users), with no restart."""
        for server in self.servers:
            if server.running:
                server.reload()

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Until every running node answers /healthz (which needs a JetStream meta leader, and
        this node's copy of every stream and consumer current) and they agree on the leader."""
        deadline = time.monotonic() + timeout
        why = "not asked yet"
        while time.monotonic() < deadline:
            why = self._not_ready()
            if not why:
                return
            time.sleep(READY_POLL_SECONDS)
        raise NatsServerError(f"the NATS cluster was not ready in {timeout:g} s: {why}")

    def _not_ready(self) -> str:
        leaders = set()
        for server in self.servers:
            if not server.running:
                continue
            try:
                health = self._monitor(server, "/healthz")
                leaders.add(self._monitor(server, "/jsz")["meta_cluster"].get("leader") or "")
            except (OSError, ValueError, KeyError) as e:
                return f"{server.name}: {e}"
            if health.get("status") != "ok":
                return f"{server.name}: {health.get('error') or health}"
        if len(leaders) != 1 or "" in leaders:
            return f"no JetStream meta leader all nodes agree on (they name {sorted(leaders)})"
        return ""

    @staticmethod
    def _monitor(server: NatsServer, path: str) -> dict[str, Any]:
        """A monitoring endpoint's JSON (a 503 from /healthz included: its body says why)."""
        # No proxies: urllib would otherwise obey http_proxy and send a loopback probe away.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(server.monitor_url + path, timeout=MONITOR_TIMEOUT_SECONDS) as r:
                answer: dict[str, Any] = json.load(r)
        except urllib.error.HTTPError as e:
            answer = json.load(e)
        return answer

    def stream_messages(self, index: int) -> dict[str, int]:
        """How many messages each stream holds in this node's own copy (from its /jsz): a node
        that caught up holds as many as the others."""
        jsz = self._monitor(self.servers[index], "/jsz?accounts=true&streams=true")
        return {
            stream["name"]: int(stream["state"]["messages"])
            for account in jsz.get("account_details") or []
            for stream in account.get("stream_detail") or []
        }

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
