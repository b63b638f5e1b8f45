"""A private Postfix submission server with SASL through a private Dovecot: the upstream SMTP
server for the gateway's SMTP recording proxy, which connects to it as a client, does STARTTLS
(or implicit TLS), AUTH PLAIN or LOGIN with a user's password, and submits mail.

Theory of operation. One folder, ``tmp_dir / name``, holds two instances:

- ``dovecot/``: a private Dovecot (tests/peers/dovecot.py) whose auth service also listens on
  a unix socket owned by the ``postfix`` user (``auth_socket_user``). Its passdb holds the
  ``users``; its POP3 side runs as usual (same users, own ports), so one Dovecot may serve
  both. ``auth_mechanisms = plain login``, ``auth_failure_delay = 0``.
- ``postfix/``: a private Postfix (tests/peers/postfix.py) with two smtpd listeners on
  ``host`` only: ``port`` (submission: STARTTLS required, ``smtpd_tls_security_level =
  encrypt``, AUTH offered only after it, ``smtpd_tls_auth_only = yes``) and ``smtps_port``
  (implicit TLS, ``smtpd_tls_wrappermode = yes``). ``smtpd_sasl_type = dovecot`` asks
  Dovecot's socket; only authenticated clients may send (``smtpd_relay_restrictions =
  permit_sasl_authenticated, reject``).

Every recipient domain is a virtual mailbox domain (``virtual_mailbox_domains = static:all``)
whose every address maps to one Maildir (``virtual_mailbox_maps = static:Maildir/``), so
whatever a test sends is delivered there by virtual(8), one file per recipient, one
delivery at a time (``virtual`` has maxproc 1 in master.cf). Queue IDs are long
(``enable_long_queue_ids``): they start with the time the message arrived, which is how
:meth:`SubmissionInstance.deliveries` orders them. With ``deliver="discard"``
``virtual_transport = discard:discarded``: messages are queued, then thrown away (a
benchmark's sink; ``wait_until_queue_empty``, ``wait_for_sent``).

What Postfix changes. Nothing in the header or body of mail it receives over SMTP:
``local_header_rewrite_clients`` is empty (its default, ``permit_inet_interfaces``, would
make a client on 127.0.0.1, the instance's ``inet_interfaces``, local, and its mail would
get Message-ID, Date, From and qualified addresses), ``always_add_missing_headers = no``;
local delivery converts no 8-bit text to quoted-printable (that is the smtp(8) client's
business) and joins long lines back. smtpd prepends one ``Received:`` field, and
virtual(8) ``Return-Path:``, ``X-Original-To:`` and ``Delivered-To:``; Maildir stores every
line with LF. :meth:`SubmissionInstance.delivered_payloads` takes those four fields off and
turns every LF back into CRLF: a message whose every line ends in CRLF comes back byte for
byte (a bare LF comes back as CRLF; a missing last line end is added, by the client).

127.0.0.2 by default, as for the Dovecot peer, whose POP3 side has the "localhost is
secure" rule (see dovecot.py); a client connecting to 127.0.0.2 has the source address
127.0.0.1. Postfix's ``inet_interfaces`` stays 127.0.0.1 (it must be an interface's
address); the listeners in master.cf bind ``host`` explicitly.

Failed logins: Dovecot answers a failed AUTH within 0.5 s (``auth_failure_delay = 0``; it
flushes failures on a 0.5-s timer) and then delays the next AUTH from the same client
address by 4 s, success or not (its anvil's auth penalty, keyed by the ``rip`` Postfix
passes; a success clears it). Fail from another loopback source address (smtplib's
``source_address=("127.0.0.3", 0)``) when later logins must be quick.
"""

from __future__ import annotations

import os
import pwd
import re
import smtplib
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio
import trustme

from .dovecot import HOST, DovecotInstance, private_dovecot, write_server_certificate
from .postfix import (
    MAIL_OWNER,
    PostfixError,
    PostfixInstance,
    QueueEntry,
    _start,
    _stop,
    common_main,
    new_instance,
    private_root,
    write_config,
)
from .tools import free_port, require

__all__ = [
    "Delivery",
    "SubmissionError",
    "SubmissionInstance",
    "open_private_submission",
    "private_submission",
]

Deliver = Literal["maildir", "discard"]

MAILDIR_USER = "nobody"  # virtual(8) writes the Maildir as this user
# The fields virtual(8) puts in front of a message in a Maildir, in this order (each only
# once; X-Original-To with enable_original_recipient, the default).
_DELIVERY_FIELDS = (b"return-path", b"x-original-to", b"delivered-to")
# virtual(8)'s Maildir file names: <seconds>.V<dev>I<inode>M<microseconds>.<hostname>
_MAILDIR_NAME = re.compile(r"^(\d+)\.V[0-9a-f]+I[0-9a-f]+M(\d+)\.")
# The queue ID in smtpd's Received: field ("... (Postfix) with ESMTPSA id 4jcHjn3RDNzJbqT").
_QUEUE_ID = re.compile(rb" \(Postfix\) with [A-Z0-9]+ id ([0-9A-Za-z]+)")
# A long queue ID (enable_long_queue_ids) starts with the time the queue file was made:
# 6 digits of seconds and 4 of microseconds, base 52 in an alphabet in ASCII order
# ("0-9", then consonants "B-Z", "b-z"), so its first 10 characters sort by arrival.
_ARRIVAL = 10


class SubmissionError(PostfixError):
    """Something the private submission server did not do; the message carries its log."""


@dataclass(frozen=True)
class Delivery:
    """One message as virtual(8) filed it for one recipient."""

    path: Path
    data: bytes  # the file: Postfix's fields in front, every line ending in LF
    sender: str  # Return-Path, without the angle brackets ("" for the null sender)
    recipient: str  # Delivered-To: the envelope recipient
    original_recipient: str  # X-Original-To: the RCPT TO address as given
    received: bytes  # the Received: field Postfix added (LF line ends)
    queue_id: str  # from that field: long, so it starts with the time the message arrived
    payload: bytes  # what the client submitted: the rest, every LF as CRLF

    def order(self) -> tuple[str, int, int, str]:
        """Arrival (the queue ID's time), then the time virtual(8) filed it (seconds,
        microseconds, from the Maildir name): one message's recipients in filing order."""
        match = _MAILDIR_NAME.match(self.path.name)
        seconds, micros = (int(match[1]), int(match[2])) if match else (0, 0)
        return (self.queue_id[:_ARRIVAL], seconds, micros, self.path.name)


def _field_lines(data: bytes) -> Iterator[tuple[bytes, bytes, int]]:
    """(lowercased name, whole field with continuation lines, end offset) for each header
    field at the top of ``data`` (LF line ends), up to the first line that is no field."""
    start = 0
    while True:
        end = start
        while True:
            newline = data.find(b"\n", end)
            if newline < 0:
                return
            end = newline + 1
            if data[end : end + 1] not in (b" ", b"\t"):
                break
        field = data[start:end]
        name, colon, _ = field.partition(b":")
        if not colon or not name or b" " in name:
            return
        yield name.lower(), field, end
        start = end


def parse_delivery(path: Path, data: bytes, hostname: str) -> Delivery:
    """Split a Maildir file written by virtual(8) into what Postfix put in front and the
    payload. The Received: field must be this instance's (``by HOSTNAME (Postfix)``); the
    client's own fields, Received: included, come after it and stay in the payload."""
    values: dict[bytes, bytes] = {}
    for name, field, end in _field_lines(data):
        if name in _DELIVERY_FIELDS and name not in values:
            values[name] = field.split(b":", 1)[1].strip()
            continue
        if name == b"received" and f"by {hostname} (Postfix)".encode() in field:
            queue_id = _QUEUE_ID.search(field)
            if b"return-path" not in values or b"delivered-to" not in values or not queue_id:
                break
            return Delivery(
                path=path,
                data=data,
                sender=values[b"return-path"].decode(errors="replace").strip("<>"),
                recipient=values[b"delivered-to"].decode(errors="replace"),
                original_recipient=values.get(b"x-original-to", b"").decode(errors="replace"),
                received=field,
                queue_id=queue_id[1].decode(),
                payload=data[end:].replace(b"\n", b"\r\n"),
            )
        break
    raise SubmissionError(
        f"{path}: not Return-Path, [X-Original-To,] Delivered-To and this instance's "
        f"Received: in front:\n{data[:1000]!r}"
    )


@dataclass(frozen=True)
class SubmissionInstance:
    """A running private submission server. The blocking methods are sync: from trio, call
    them with ``trio.to_thread.run_sync``."""

    postfix: PostfixInstance
    dovecot: DovecotInstance
    host: str
    port: int  # submission: STARTTLS required, then AUTH
    smtps_port: int  # implicit TLS, then AUTH
    ca_file: Path  # the CA that signs the server certificate (Postfix's and Dovecot's)
    users: Mapping[str, str]  # user name -> password
    deliver: Deliver
    maildir: Path  # where every message goes (deliver="maildir")
    hostname: str  # myhostname: in the greeting and in the Received: field

    @property
    def log_file(self) -> Path:
        return self.postfix.log_file

    # -- mail in ---------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts ``ca_file`` (and checks the host name)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def send(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        user: str | None = None,
        implicit_tls: bool = False,
    ) -> None:
        """Submit one message as a mail client does: STARTTLS on ``port`` (or implicit TLS
        on ``smtps_port``), AUTH as ``user`` (default: the first), then the message
        unchanged (its lines must end in CRLF; smtplib dot-stuffs)."""
        user = user if user is not None else next(iter(self.users))
        try:
            client: smtplib.SMTP
            if implicit_tls:
                client = smtplib.SMTP_SSL(
                    self.host, self.smtps_port, context=self.ssl_context(), timeout=30
                )
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=30)
            with client:
                if not implicit_tls:
                    client.starttls(context=self.ssl_context())
                client.login(user, self.users[user])
                refused = client.sendmail(sender, list(recipients), message)
        except (OSError, smtplib.SMTPException) as exc:
            raise SubmissionError(self._explain(f"submission failed: {exc!r}")) from exc
        if refused:
            raise SubmissionError(self._explain(f"recipients refused: {refused}"))

    # -- mail out: the Maildir -------------------------------------------------------------

    def delivery_files(self) -> list[Path]:
        """The Maildir's files (``new/``), in no particular order."""
        return [p for p in (self.maildir / "new").iterdir() if p.is_file()]

    def deliveries(self) -> list[Delivery]:
        """Every delivery so far, parsed, one per recipient, in the order the messages
        arrived (for messages submitted one after the other: the order of submission),
        one message's recipients in the order they were filed. Not the order of the files'
        times: qmgr takes messages from the incoming queue in directory order, so two
        messages that arrive close together may be filed the other way round."""
        found = [parse_delivery(p, p.read_bytes(), self.hostname) for p in self.delivery_files()]
        return sorted(found, key=Delivery.order)

    def delivered(self) -> list[bytes]:
        """The delivered files' bytes, in :meth:`deliveries`' order: LF line ends,
        Postfix's Return-Path, X-Original-To, Delivered-To and Received fields in front. A
        message with several recipients is filed once for each."""
        return [d.data for d in self.deliveries()]

    def delivered_payloads(self) -> list[bytes]:
        """:meth:`delivered` without what Postfix added and with every LF as CRLF: the
        octets the client submitted (after dot-unstuffing) when its lines all end in
        CRLF."""
        return [d.payload for d in self.deliveries()]

    def wait_for_delivered(self, count: int, timeout: float = 30.0) -> list[bytes]:
        """:meth:`delivered` once it holds at least ``count`` files, or SubmissionError
        with the queue and the log. A file appears in ``new/`` whole (Maildir)."""
        deadline = time.monotonic() + timeout
        while len(files := self.delivery_files()) < count:
            if time.monotonic() >= deadline:
                raise SubmissionError(
                    self._explain(
                        f"{len(files)} of {count} deliveries after {timeout} s; "
                        f"queue: {self.queue()[:5]}"
                    )
                )
            time.sleep(0.02)
        return self.delivered()

    # -- the queue -------------------------------------------------------------------------

    def queue(self) -> list[QueueEntry]:
        return self.postfix.queue()

    def wait_until_queue_empty(self, timeout: float) -> None:
        """Block until every accepted message is delivered (or discarded)."""
        self.postfix.wait_until_queue_empty(timeout)

    def sent_count(self) -> int:
        """Deliveries the log reports done (``status=sent``, one per recipient; discard
        ones included). Log lines arrive through postlogd, a moment late."""
        return self.log_text().count(" status=sent ")

    def wait_for_sent(self, count: int, timeout: float = 30.0) -> None:
        """Block until :meth:`sent_count` reaches ``count``, or SubmissionError."""
        deadline = time.monotonic() + timeout
        while (sent := self.sent_count()) < count:
            if time.monotonic() >= deadline:
                raise SubmissionError(
                    self._explain(f"{sent} of {count} deliveries logged after {timeout} s")
                )
            time.sleep(0.02)

    # -- what happened ---------------------------------------------------------------------

    def log_text(self) -> str:
        """Postfix's log (Dovecot's: ``self.dovecot.log_text()``)."""
        return self.postfix.log_text()

    def processes(self) -> list[int]:
        """Every live process of both instances."""
        return self.postfix.processes() + self.dovecot.processes()

    def _explain(self, what: str) -> str:
        return (
            self.postfix._explain(what)
            + "\n--- Dovecot log tail ---\n"
            + self.dovecot.log_text()[-3000:]
        )


@contextmanager
def private_submission(
    tmp_dir: Path,
    *,
    users: Mapping[str, str] | None = None,
    host: str = HOST,
    port: int | None = None,
    smtps_port: int | None = None,
    ca: trustme.CA | None = None,
    deliver: Deliver = "maildir",
    settings: Mapping[str, str] | None = None,
    dovecot_settings: Mapping[str, str] | None = None,
    name: str = "submission",
) -> Iterator[SubmissionInstance]:
    """Run a private Postfix submission server, with SASL through a private Dovecot, in
    ``tmp_dir / name`` until the block ends.

    ``users``: user name -> password (default ``{"alice": "password"}``). ``host``: the
    address both listeners use (127.0.0.2: see the module docstring). Ports None pick free
    ones. ``ca``: the trustme CA to issue the certificate from (default: a new one;
    ``ca_file`` is written either way). ``deliver``: ``"maildir"`` (every message filed in
    ``maildir``) or ``"discard"``. ``settings``: extra main.cf parameters, applied last;
    ``dovecot_settings``: extra dovecot.conf lines. Stopping stops Postfix, then Dovecot,
    and kills what is left of either; the logs stay in ``tmp_dir / name``.
    """
    for tool in ("postfix", "postconf", "postqueue"):
        require(tool)
    if deliver not in ("maildir", "discard"):
        raise ValueError(f"deliver: 'maildir' or 'discard', not {deliver!r}")
    ca = ca or trustme.CA()
    with (
        private_root(
            tmp_dir,
            name,
            users=(MAIL_OWNER, "dovecot", MAILDIR_USER),
            keep=("postfix/maillog", "dovecot/dovecot.log"),
        ) as root,
        private_dovecot(
            root,
            name="dovecot",
            users=users if users is not None else {"alice": "password"},
            host=host,
            ca=ca,
            auth_socket_user=MAIL_OWNER,
            settings={
                "auth_mechanisms": "plain login",
                "auth_failure_delay": "0",
                **(dovecot_settings or {}),
            },
        ) as dovecot,
    ):
        (root / "postfix").mkdir()
        postfix = new_instance(
            root / "postfix", port=port or free_port(host), relay=None, host=host
        )
        instance = SubmissionInstance(
            postfix=postfix,
            dovecot=dovecot,
            host=host,
            port=postfix.port,
            smtps_port=smtps_port or free_port(host),
            ca_file=dovecot.ca_file,
            users=dovecot.users,
            deliver=deliver,
            maildir=root / "Maildir",
            hostname=f"peer-{postfix.port}.submission.test",
        )
        _configure(instance, ca, settings or {})
        try:
            # The master binds both listeners before ``postfix start`` returns (a port in
            # use fails the start: "fatal: bind 127.0.0.2 port N: Address already in use").
            _start(postfix)
            yield instance
        finally:
            _stop(postfix)


@asynccontextmanager
async def open_private_submission(
    tmp_dir: Path,
    *,
    users: Mapping[str, str] | None = None,
    host: str = HOST,
    port: int | None = None,
    smtps_port: int | None = None,
    ca: trustme.CA | None = None,
    deliver: Deliver = "maildir",
    settings: Mapping[str, str] | None = None,
    dovecot_settings: Mapping[str, str] | None = None,
    name: str = "submission",
) -> AsyncIterator[SubmissionInstance]:
    """:func:`private_submission` for trio: start and stop run in a worker thread."""
    manager = private_submission(
        tmp_dir,
        users=users,
        host=host,
        port=port,
        smtps_port=smtps_port,
        ca=ca,
        deliver=deliver,
        settings=settings,
        dovecot_settings=dovecot_settings,
        name=name,
    )
    instance = await trio.to_thread.run_sync(manager.__enter__)
    try:
        yield instance
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.__exit__, None, None, None)


def _configure(instance: SubmissionInstance, ca: trustme.CA, settings: Mapping[str, str]) -> None:
    postfix, host = instance.postfix, instance.host
    assert instance.dovecot.auth_socket is not None
    # smtpd reads key and certificate as root, before it drops privileges.
    tls_dir = postfix.root / "tls"
    tls_dir.mkdir()
    write_server_certificate(ca, host, ca_file=tls_dir / "ca.pem", folder=tls_dir)
    # The one Maildir, the virtual(8) user's.
    nobody = pwd.getpwnam(MAILDIR_USER)
    for folder in (instance.maildir, *(instance.maildir / sub for sub in ("cur", "new", "tmp"))):
        folder.mkdir(mode=0o700)
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    main = {
        **common_main(postfix, hostname=instance.hostname),
        # Who may send: authenticated clients, to anywhere. permit_mynetworks is in no
        # restriction list; mynetworks only exempts loopback from anvil's limits (50
        # connections per client by default).
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_recipient_restrictions": "",
        # SASL through Dovecot's auth socket (not chrooted: an absolute path works).
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": str(instance.dovecot.auth_socket),
        "smtpd_sasl_security_options": "noanonymous",
        "smtpd_sasl_authenticated_header": "no",
        "broken_sasl_auth_clients": "no",
        # TLS: required before anything but EHLO, STARTTLS, NOOP, RSET, QUIT, and AUTH
        # only after it (both are said again, for the record, in master.cf).
        "smtpd_tls_chain_files": f"{tls_dir / 'key.pem'}, {tls_dir / 'cert.pem'}",
        "smtpd_tls_security_level": "encrypt",
        "smtpd_tls_auth_only": "yes",
        "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_received_header": "no",
        # Everything is delivered to one Maildir (or discarded): every domain is a virtual
        # mailbox domain, every address there the same mailbox.
        "relay_domains": "",
        "relayhost": "",
        "default_transport": "error:5.7.1 no relaying from a private submission server",
        "virtual_mailbox_domains": "static:all",
        "virtual_mailbox_maps": f"static:{instance.maildir.name}/",
        "virtual_mailbox_base": str(instance.maildir.parent),
        "virtual_uid_maps": f"static:{nobody.pw_uid}",
        "virtual_gid_maps": f"static:{nobody.pw_gid}",
        "virtual_mailbox_limit": "0",
        # discard(8) logs its next hop as the reason: "status=sent (discarded)".
        "virtual_transport": "virtual" if instance.deliver == "maildir" else "discard:discarded",
        # Byte for byte: no header added or rewritten (also common_main's), no 8-bit to
        # quoted-printable (a smtp(8) matter; said anyway).
        "disable_mime_output_conversion": "yes",
        "always_add_missing_headers": "no",
        # Never slow the clients down when deliveries lag (a benchmark's upstream).
        "in_flow_delay": "0s",
        # Queue IDs that start with the arrival time: deliveries() sorts by them.
        "enable_long_queue_ids": "yes",
        **settings,
    }
    listeners = []
    for listen_port, options in (
        (instance.port, "-o smtpd_tls_security_level=encrypt -o smtpd_tls_auth_only=yes"),
        (instance.smtps_port, "-o smtpd_tls_wrappermode=yes"),
    ):
        address = f"{host}:{listen_port}"
        listeners.append(f"{address}/inet={address} inet n - n - - smtpd {options}")
    # One delivery at a time: one message's recipients are filed one after the other.
    write_config(postfix, main, listeners, services={"virtual/unix": "unix - n n - 1 virtual"})
