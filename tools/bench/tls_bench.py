"""The TLS layer alone: trio's SSLStream against the gateway's TLSStream (gateway/tlsstream.py),
and both against OpenSSL on a blocking socket (``stdlib``), CPU per message on the serving
side, with Python's ssl module as the peer in another process.

Theory of operation
-------------------
For each stream and direction, this process serves one implicit-TLS connection on 127.0.0.1
(a trustme certificate) and starts a peer, this script again with ``--peer``, which connects
with a blocking ``ssl`` socket (TCP_NODELAY) and:

``receive``
    sends ``--messages`` messages of ``--size`` octets, each cut into ``--record``-octet
    writes (one TLS record each: Dovecot and Postfix write 4 KiB records), and waits for a
    5-octet answer after each; the trio side reads each message with ``receive_some(65536)``
    until it has all of it, then answers. This is the proxies' upstream side.
``send``
    sends a 6-octet command per message; the trio side reads it and answers with one
    ``send_all`` of ``--size`` octets, which the peer reads whole. This is POP3 RETR.

``stdlib`` serves the same from a thread with a blocking ``ssl.SSLSocket``: OpenSSL reads
and writes the socket itself, one Python call per record read (``SSL_read`` returns one
record) and per message written; that is about what TLS costs in C here.

``CPU ms/msg`` is the serving side's user + system CPU from the handshake's end to the last
message, per message (``getrusage`` of this process for the trio streams; ``thread_time``
of the serving thread for ``stdlib``); ``calls/msg`` is ``receive_some`` (``recv``) calls
per message. Both sides share the machine's cores; the peer's CPU is not counted.
"""

from __future__ import annotations

import argparse
import resource
import socket
import ssl
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio
import trustme
from _common import ROOT

from gateway.tlsstream import wrap_server

ANSWER = b"+OK\r\n"
COMMAND = b"RETR\r\n"


def peer(port: int, mode: str, messages: int, size: int, record: int, cafile: str) -> None:
    context = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        message = b"x" * size
        for _ in range(messages):
            if mode == "receive":
                for offset in range(0, size, record):
                    tls.sendall(message[offset : offset + record])
                answer = b""
                while len(answer) < len(ANSWER):
                    answer += tls.recv(64)
            else:
                tls.sendall(COMMAND)
                got = 0
                while got < size:
                    got += len(tls.recv(262144))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve_blocking(
    listener: socket.socket, context: ssl.SSLContext, mode: str, args: argparse.Namespace
) -> dict[str, float]:
    """The reference: OpenSSL driving a blocking socket (``ssl.SSLSocket``) in a thread, with
    one Python call per record read and per message written."""
    raw, _ = listener.accept()
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with context.wrap_socket(raw, server_side=True) as tls:
        reply = b"y" * args.size
        calls = 0
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(args.messages):
            if mode == "receive":
                got = 0
                while got < args.size:
                    got += len(tls.recv(65536))
                    calls += 1
                tls.sendall(ANSWER)
            else:
                tls.recv(65536)
                calls += 1
                tls.sendall(reply)
        return {"cpu": time.thread_time() - cpu, "wall": time.perf_counter() - wall, "calls": calls}


async def measure(kind: str, mode: str, args: argparse.Namespace, folder: Path) -> str:
    ca = trustme.CA()
    cafile = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    done = trio.Event()
    result: dict[str, float] = {}

    async def serve(tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream
        if kind == "trio":
            stream = ssl_stream = trio.SSLStream(tcp, context, server_side=True)
            await ssl_stream.do_handshake()
        else:
            stream = tls = wrap_server(tcp, context)
            await tls.do_handshake()
        reply = b"y" * args.size
        calls = 0
        cpu, wall = _cpu(), time.perf_counter()
        for _ in range(args.messages):
            if mode == "receive":
                got = 0
                while got < args.size:
                    got += len(await stream.receive_some(65536))
                    calls += 1
                await stream.send_all(ANSWER)
            else:
                await stream.receive_some(65536)
                calls += 1
                await stream.send_all(reply)
        result.update(cpu=_cpu() - cpu, wall=time.perf_counter() - wall, calls=calls)
        done.set()
        await trio.aclose_forcefully(stream)

    async def start_peer(port: int) -> trio.Process:
        argv = [str(port), mode, str(args.messages), str(args.size), str(args.record)]
        return await trio.lowlevel.open_process(
            [sys.executable, __file__, "--peer", *argv, str(cafile)], cwd=ROOT
        )

    if kind == "stdlib":
        with socket.create_server(("127.0.0.1", 0)) as listener:
            process = await start_peer(listener.getsockname()[1])
            result.update(
                await trio.to_thread.run_sync(serve_blocking, listener, context, mode, args)
            )
            await process.wait()
    else:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, host="127.0.0.1"), serve, 0)
            process = await start_peer(listeners[0].socket.getsockname()[1])
            await done.wait()
            await process.wait()
            nursery.cancel_scope.cancel()
    n = args.messages
    return (
        f"{kind:8} {mode:8} {n:6d} {1000 * result['cpu'] / n:10.3f} "
        f"{result['calls'] / n:9.1f} {result['wall']:7.2f}"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        port, mode, messages, size, record, cafile = sys.argv[2:8]
        peer(int(port), mode, int(messages), int(size), int(record), cafile)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=50 * 1024, help="octets per message")
    parser.add_argument("--record", type=int, default=4096, help="octets per peer write")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each, interleaved")
    args = parser.parse_args()
    print("stream   dir        msgs CPU ms/msg calls/msg  wall s")
    with tempfile.TemporaryDirectory(prefix="tls_bench-") as folder:
        for _ in range(args.rounds):
            for mode in ("receive", "send"):
                for kind in ("trio", "gateway", "stdlib"):
                    print(trio.run(measure, kind, mode, args, Path(folder)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
