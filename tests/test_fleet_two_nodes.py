"""Two `gateway serve` nodes on one fleet store (SPEC.md 17.5), on 127.0.0.1 and 127.0.0.2
with the same ports, each with its protocol workers, on a real PostgreSQL: mail sent to either
node is retrieved from the other byte for byte; a maildrop locked on one is [IN-USE] on the
other; the audit feed of one node carries both nodes' events in the control log's one order;
and the store, copied out, verifies."""

from __future__ import annotations

import json
import poplib
import socket
from pathlib import Path

import pytest
import trio

from gateway.verify import verify_data_dir

from .gateway_helpers import strip_received
from .peers import PostgresServer
from .test_fleet_archive import copied_out
from .test_fleet_serve import create_mailbox
from .test_workers import CONFIG, Served, admin_cli, insecure, retrieve, send_all, serve

pytestmark = pytest.mark.slow

NODES = ("127.0.0.1", "127.0.0.2")


def free_port_on_every_node() -> int:
    """A port free on both loopback addresses (the nodes listen on the same ports)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((NODES[0], 0))
            port = int(probe.getsockname()[1])
        try:
            with socket.socket() as other:
                other.bind((NODES[1], port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on both loopback addresses")


def node_config(address: str, name: str, dsn: str, ports: dict[str, int]) -> str:
    """CONFIG for one node: its listeners on ``address`` at the shared ports, its store the
    fleet store."""
    config = CONFIG
    for listener, port in ports.items():
        config = config.replace(
            f'name = "{listener}"\nprotocol = "{listener}"\nport = 0\n',
            f'name = "{listener}"\nprotocol = "{listener}"\naddress = "{address}"\nport = {port}\n',
        )
    store = f'[store]\nbackend = "postgresql"\ndsn = {json.dumps(dsn)}\nnode = "{name}"\n'
    return config.replace("[store]\n", store)


def audit_feed(folder: Path, served: Served, host: str) -> list[dict[str, object]]:
    """Every record of the node's audit feed, as its admin CLI prints them."""
    out = admin_cli(folder, served, "audit", "tail", "--since", "0", host=host)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_two_nodes_serve_one_store(postgres: PostgresServer, tmp_path: Path) -> None:
    ports = {name: free_port_on_every_node() for name in ("smtp", "pop3", "admin")}
    mailbox_id, password = trio.run(create_mailbox, tmp_path / "setup", postgres.dsn)
    to_a = [b"Subject: a%d\r\n\r\nsent to node a %d\r\n" % (n, n) for n in range(15)]
    to_b = [b"Subject: b%d\r\n\r\nsent to node b %d\r\n" % (n, n) for n in range(15)]
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a_config = node_config(NODES[0], "node-a", postgres.dsn, ports)
    b_config = node_config(NODES[1], "node-b", postgres.dsn, ports)
    with (
        serve(a_dir, workers=2, config_text=a_config) as a,
        serve(b_dir, workers=2, config_text=b_config) as b,
    ):
        send_all(ports["smtp"], mailbox_id, to_a, host=NODES[0])
        send_all(ports["smtp"], mailbox_id, to_b, host=NODES[1])
        # Each node serves what was sent to the other (and to itself).
        from_b = retrieve(ports["pop3"], mailbox_id, password, host=NODES[1])
        assert sorted(strip_received(m) for m in from_b) == sorted(to_a + to_b)

        # Locked on a: [IN-USE] on b, until a's session ends.
        holder = poplib.POP3(NODES[0], ports["pop3"], timeout=20)
        holder.stls(context=insecure())
        holder.user(mailbox_id)
        holder.pass_(password)
        other = poplib.POP3(NODES[1], ports["pop3"], timeout=20)
        other.stls(context=insecure())
        other.user(mailbox_id)
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            other.pass_(password)
        other.quit()
        holder.quit()  # the lock is gone before its +OK: b takes the maildrop at once
        again = poplib.POP3(NODES[1], ports["pop3"], timeout=20)
        again.stls(context=insecure())
        again.user(mailbox_id)
        again.pass_(password)
        again.quit()
        from_a = retrieve(ports["pop3"], mailbox_id, password, delete=True, host=NODES[0])
        assert sorted(from_a) == sorted(from_b)

        # One feed: a's carries b's start and b's sessions, in the one order of seqs.
        feed = audit_feed(a_dir, a, NODES[0])
        seqs = [int(str(item["seq"])) for item in feed]
        assert seqs == list(range(len(seqs)))
        events = [item["event"] for item in feed if isinstance(item["event"], dict)]
        started = {e["node"] for e in events if e["type"] == "GatewayStarted"}
        assert started == {"node-a", "node-b"}
        smtp_clients = {e["client_address"] for e in events if e["type"] == "SmtpSessionEnded"}
        assert smtp_clients == set(NODES)
        assert audit_feed(b_dir, b, NODES[1])[: len(feed)] == feed
    assert a.process.returncode == 0 and b.process.returncode == 0

    copy = copied_out(postgres.dsn, tmp_path / "copy")
    report = verify_data_dir(copy.root)
    assert report.ok, [str(p) for p in report.problems]
    assert report.messages == 0  # all retrieved and deleted, durably
