"""The admin API's operations: each typed request to the archive or the accounts, each
outcome to a typed reply and an audit record. No sockets here (``servers.admin`` drives it).

Every successful change is its own control-log event with the admin (or token) as actor and
the client address (MailboxCreated, MailboxUpdated, ApiTokenCreated, ...; the account's own
events are appended by ``accounts``); every refused
request is an ``AdminRequestFailed`` event with the error given; every login attempt an
``AdminLogin`` event. Passwords and tokens appear in replies only, never in an event or a log
line.

``mailbox.passwd`` checks a mailbox password, so it is a login in all but name: it gets the
POP3 login's failure delay and a lockout per mailbox (``passwd_throttle``), or an API token
would be a way to guess mailbox passwords as fast as Argon2id runs.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from datetime import datetime
from functools import partial

import trio

from ..crypto import WrongPassword
from ..events import (
    Actor,
    AdminLogin,
    AdminRequestFailed,
    MailboxStatus,
    now,
)
from ..log import LogCorrupt, LogWriteError
from ..protocols import admin as api
from ..protocols.admin import ApiError, ErrorCode
from ..tlog import NoteError, Verifier
from ._common import (
    ArchiveError,
    InvalidValue,
    MailboxStateConflict,
    MailboxUnavailable,
    NoSuchMailbox,
)
from .accounts import Accounts, LoginRefused, Principal
from .archive import Archive
from .message_index import StoredMessage
from .projection import ApiToken, MailboxInfo
from .throttle import LoginThrottle
from .tree_heads import CheckpointSigner, ProofError, consistency_proof, inclusion_proof

__all__ = [
    "MIN_PASSWORD",
    "AdminService",
    "mailbox_view",
    "mailbox_views",
    "oldest_waiting_at",
    "unreadable_messages",
]

logger = logging.getLogger("gateway")

MIN_PASSWORD = 12  # characters, for passwords an admin chooses (generated ones are 30)

RESET_WARNING = (
    "The mailbox has a new key. {what} stored before the reset can never be decrypted "
    "again from this data folder (only a backup copy of the old key file, with the old "
    "password, still opens them); they stay in the log until purged "
    "(mailbox.purge-unreadable)."
)


def unreadable_messages(archive: Archive, mailbox_id: str) -> list[StoredMessage]:
    """The mailbox's messages sealed to a key a reset retired: nobody can ever read them, and
    POP3 leaves them out."""
    current = archive.mailbox(mailbox_id).key_id
    return [m for m in archive.messages(mailbox_id) if m.key_id != current]


def mailbox_view(
    archive: Archive,
    info: MailboxInfo,
    domain: str,
    *,
    oldest_waiting_at: datetime | None = None,
) -> api.MailboxView:
    """Synchronous and cheap; ``oldest_waiting_at`` (a read of the log, once per oldest
    message) comes from :func:`oldest_waiting_at`, awaited by the caller."""
    # Counted without a copy of the index: a status of ten million messages stays cheap.
    totals = archive.by_key(info.mailbox_id)
    readable = totals.pop(info.key_id, (0, 0))
    unreadable = (sum(n for n, _o in totals.values()), sum(o for _n, o in totals.values()))
    state = archive.state
    return api.MailboxView(
        mailbox_id=info.mailbox_id,
        address=f"mbx-{info.mailbox_id}@{domain}",
        name=info.name,
        description=info.description,
        status=str(info.status),
        messages=readable[0],
        bytes=readable[1],
        created_at=info.created_at,
        updated_at=info.updated_at,
        last_delivery=state.last_delivery.get(info.mailbox_id),
        last_retrieval=state.last_retrieval.get(info.mailbox_id),
        damaged=archive.damage_report(info.mailbox_id),
        unreadable_messages=unreadable[0],
        unreadable_bytes=unreadable[1],
        alarms=tuple(sorted(state.alarms.get(info.mailbox_id, ()))),
        max_waiting_age=info.max_waiting_age,
        max_waiting_bytes=info.max_waiting_bytes,
        expect_mail_every=info.expect_mail_every,
        oldest_waiting_at=oldest_waiting_at,
    )


async def oldest_waiting_at(archive: Archive, mailbox_id: str) -> datetime | None:
    """When the mailbox's oldest waiting message was committed; None when none waits or it
    cannot be told now (a mailbox deleted, damaged or not open yet, the message expunged
    meanwhile): a view never fails for it. ``Archive.oldest_waiting_at`` caches it, so
    only a new oldest message costs a read."""
    try:
        return await archive.oldest_waiting_at(mailbox_id)
    except (ArchiveError, LogCorrupt, OSError):
        return None


async def mailbox_views(
    archive: Archive, infos: Iterable[MailboxInfo], domain: str
) -> tuple[api.MailboxView, ...]:
    """The views of ``infos``, each with the time of its oldest waiting message."""
    return tuple(
        [
            mailbox_view(
                archive,
                info,
                domain,
                oldest_waiting_at=await oldest_waiting_at(archive, info.mailbox_id),
            )
            for info in infos
        ]
    )


def actor_of(principal: Principal | None, address: str) -> Actor:
    if principal is None:
        return Actor(kind="admin", name="", address=address)
    return Actor(kind=principal.kind, name=principal.name, address=address)


class AdminService:
    def __init__(
        self,
        archive: Archive,
        accounts: Accounts,
        mail_domain: str,
        *,
        failure_delay: float = 2.0,
        max_failures: int = 10,
    ) -> None:
        self.archive = archive
        self.accounts = accounts
        self.mail_domain = mail_domain
        self.throttle_passwd(failure_delay, max_failures)
        # The journal's checkpoint signer (SPEC.md 8.1), set by whoever runs one.
        self.checkpoints: CheckpointSigner | None = None

    def throttle_passwd(self, failure_delay: float, max_failures: int) -> None:
        """A wrong old password in ``mailbox.passwd`` is answered ``failure_delay`` s after
        the request arrived; ``max_failures`` in a row lock the mailbox's passwd out for 60 s,
        doubling up to 15 min (the POP3 login's policy, SPEC.md 10 and 13.3)."""
        self.failure_delay = failure_delay
        self.passwd_throttle = LoginThrottle(max_failures=max_failures, lockout=60.0)

    # -- login ---------------------------------------------------------------------------------

    async def login(self, request: api.Login, address: str) -> tuple[Principal, api.Session]:
        """Raises ApiError; every attempt is audited."""
        if (request.password is None) == (request.token is None):
            raise ApiError(ErrorCode.BAD_REQUEST, "login takes a password or a token")
        method = "password" if request.password is not None else "token"
        try:
            if request.password is not None:
                principal, token = await self.accounts.login_password(request.password, address)
                reply = api.Session(
                    id=request.id,
                    actor=principal.label,
                    token=token,
                    expires_at=principal.expires_at,
                )
            else:
                assert request.token is not None
                principal = await self.accounts.login_token(request.token, address)
                method = "session" if principal.session_id else "token"
                reply = api.Session(
                    id=request.id, actor=principal.label, expires_at=principal.expires_at
                )
        except LoginRefused as exc:
            await self._audit(
                AdminLogin(
                    at=now(),
                    actor=Actor(kind="admin", address=address),
                    method=method,
                    success=False,
                    reason=exc.reason,
                )
            )
            logger.info("event=admin-login-failed client=%s reason=%r", address, exc.reason)
            if exc.retry_after is not None:
                raise ApiError(
                    ErrorCode.THROTTLED, exc.reason, retry_after=exc.retry_after
                ) from None
            raise ApiError(ErrorCode.BAD_CREDENTIALS, "login failed") from None
        except LogWriteError as exc:  # the session could not be recorded: no session
            raise ApiError(ErrorCode.UNAVAILABLE, str(exc)) from None
        await self._audit(
            AdminLogin(at=now(), actor=actor_of(principal, address), method=method, success=True)
        )
        logger.info("event=admin-login actor=%s client=%s", principal.label, address)
        return principal, reply

    async def _audit(self, event: AdminLogin | AdminRequestFailed) -> None:
        try:
            await self.archive.append_control(event, durable=False)
        except LogWriteError as exc:
            logger.error("event=audit-write-failed reason=%r", str(exc))

    # -- operations ----------------------------------------------------------------------------

    async def handle(self, request: api.Request, principal: Principal, address: str) -> api.Reply:
        """Serve one request of a logged-in client. Raises ApiError (audited)."""
        actor = actor_of(principal, address)
        await self.archive.all_opened()  # its views count every mailbox's messages
        try:
            try:
                return await self._run(request, actor)
            except NoSuchMailbox as exc:
                raise ApiError(ErrorCode.NO_SUCH_MAILBOX, str(exc)) from None
            except (InvalidValue, ValueError) as exc:
                raise ApiError(ErrorCode.INVALID, str(exc)) from None
            except MailboxStateConflict as exc:
                raise ApiError(ErrorCode.CONFLICT, str(exc)) from None
            except WrongPassword:
                raise ApiError(
                    ErrorCode.WRONG_PASSWORD, "the old password does not open this mailbox"
                ) from None
            except (MailboxUnavailable, LogWriteError, OSError) as exc:
                raise ApiError(ErrorCode.UNAVAILABLE, str(exc)) from None
            except ArchiveError as exc:
                raise ApiError(ErrorCode.CONFLICT, str(exc)) from None
        except ApiError as error:
            await self._audit(
                AdminRequestFailed(
                    at=now(),
                    actor=actor,
                    op=_op(request),
                    mailbox_id=_mailbox_of(request),
                    code=error.code,
                    message=error.message,
                )
            )
            raise

    async def _run(self, request: api.Request, actor: Actor) -> api.Reply:
        match request:
            case api.MailboxList():
                return await self._mailbox_list(request, actor)
            case api.MailboxGet():
                return await self._mailbox_get(request, actor)
            case api.MailboxCreate():
                return await self._mailbox_create(request, actor)
            case api.MailboxUpdate():
                return await self._mailbox_update(request, actor)
            case api.MailboxSuspend():
                return await self._mailbox_suspend(request, actor)
            case api.MailboxActivate():
                return await self._mailbox_activate(request, actor)
            case api.MailboxPasswd():
                return await self._mailbox_passwd(request, actor)
            case api.MailboxReset():
                return await self._mailbox_reset(request, actor)
            case api.MailboxDelete():
                return await self._mailbox_delete(request, actor)
            case api.MailboxPurgeUnreadable():
                return await self._mailbox_purge_unreadable(request, actor)
            case api.AdminPasswd():
                return await self._admin_passwd(request, actor)
            case api.TokenCreate():
                return await self._token_create(request, actor)
            case api.TokenList():
                return await self._token_list(request, actor)
            case api.TokenRevoke():
                return await self._token_revoke(request, actor)
            case api.CheckpointLatest():
                note = await trio.to_thread.run_sync(self.archive.data.read_checkpoint)
                return api.CheckpointReply(id=request.id, note=(note or b"").decode())
            case api.ProofConsistency():
                return await self._consistency(request)
            case api.CheckpointSign():
                if self.checkpoints is None:
                    raise ApiError(ErrorCode.BAD_REQUEST, "this gateway signs no checkpoints")
                await self.checkpoints.sign()
                note = await trio.to_thread.run_sync(self.archive.data.read_checkpoint)
                return api.CheckpointReply(id=request.id, note=(note or b"").decode())
            case api.ProofInclusion():
                return await self._inclusion(request)
            case _:  # login, logout, status and audit.* belong to the connection
                raise ApiError(ErrorCode.BAD_REQUEST, f"{_op(request)} is not served here")

    async def _inclusion(self, request: api.ProofInclusion) -> api.Reply:
        """The inclusion proof of a message's commit record, found through its mailbox's
        index, from its log's tree file (a few reads, SPEC.md 8.1)."""
        if self.checkpoints is None:
            raise ApiError(ErrorCode.BAD_REQUEST, "this gateway signs no checkpoints")
        await self.archive.all_opened()
        serving = self.archive.serving(request.message_id)
        if request.mailbox_id:
            serving = [box for box in serving if box == request.mailbox_id]
        if not serving:
            raise ApiError(ErrorCode.BAD_REQUEST, f"no mailbox serves {request.message_id}")
        data, verifier = self.archive.data, Verifier.parse(self.checkpoints.signer.vkey())
        try:
            seq, body = await self.archive.commit_record(serving[0], request.message_id)
            proof = await trio.to_thread.run_sync(
                inclusion_proof, data, verifier, serving[0], seq, body
            )
        except (ProofError, NoteError, ArchiveError) as exc:
            raise ApiError(ErrorCode.BAD_REQUEST, str(exc)) from None
        return api.InclusionProofReply(
            id=request.id,
            index=proof.index,
            leaf=base64.b64encode(proof.leaf).decode(),
            hashes=tuple(base64.b64encode(h).decode() for h in proof.hashes),
            mailbox_id=proof.mailbox_id,
            size=proof.size,
            checkpoint=proof.note.decode(),
        )

    async def _consistency(self, request: api.ProofConsistency) -> api.Reply:
        """A consistency proof from a log's tree file (in a worker thread)."""
        data, box = self.archive.data, request.mailbox_id or None
        try:
            if box is not None:
                box = self.archive.mailbox(box).mailbox_id
            note = await trio.to_thread.run_sync(
                data.read_checkpoint if box is None else partial(data.read_mailbox_checkpoint, box)
            )
            signed = int(note.split(b"\n")[1]) if note else 0
            hashes = await trio.to_thread.run_sync(
                consistency_proof, data, request.old_size, request.new_size, signed, box
            )
        except ArchiveError as exc:
            raise ApiError(ErrorCode.NO_SUCH_MAILBOX, str(exc)) from None
        except ProofError as exc:
            raise ApiError(ErrorCode.BAD_REQUEST, str(exc)) from None
        return api.ConsistencyProofReply(
            id=request.id,
            old_size=request.old_size,
            new_size=request.new_size,
            hashes=tuple(base64.b64encode(h).decode() for h in hashes),
        )

    async def _view(self, info: MailboxInfo) -> api.MailboxView:
        return mailbox_view(
            self.archive,
            info,
            self.mail_domain,
            oldest_waiting_at=await oldest_waiting_at(self.archive, info.mailbox_id),
        )

    async def _mailbox_list(self, request: api.MailboxList, actor: Actor) -> api.Reply:
        views = await mailbox_views(self.archive, self.archive.mailboxes(), self.mail_domain)
        return api.Mailboxes(id=request.id, mailboxes=views)

    async def _mailbox_get(self, request: api.MailboxGet, actor: Actor) -> api.Reply:
        return api.Mailbox(
            id=request.id, mailbox=await self._view(self.archive.mailbox(request.mailbox))
        )

    async def _mailbox_create(self, request: api.MailboxCreate, actor: Actor) -> api.Reply:
        if not request.name.strip():
            raise InvalidValue("a mailbox needs a name")
        _check_chosen_password(request.password)
        info, password = await self.archive.create_mailbox(
            request.name, request.description, password=request.password, actor=actor
        )
        return api.MailboxCreated(id=request.id, mailbox=await self._view(info), password=password)

    async def _mailbox_update(self, request: api.MailboxUpdate, actor: Actor) -> api.Reply:
        if request.name is not None and not request.name.strip():
            raise InvalidValue("a mailbox needs a name")
        alarms = {
            name: (None if value < 0 else value)
            for name, value in (
                ("max_waiting_age", request.max_waiting_age),
                ("max_waiting_bytes", request.max_waiting_bytes),
                ("expect_mail_every", request.expect_mail_every),
            )
            if value is not None
        }
        info = await self.archive.update_mailbox(
            request.mailbox,
            name=request.name,
            description=request.description,
            alarms=alarms,
            actor=actor,
        )
        return api.Mailbox(id=request.id, mailbox=await self._view(info))

    async def _mailbox_suspend(self, request: api.MailboxSuspend, actor: Actor) -> api.Reply:
        return await self._set_status(request, MailboxStatus.SUSPENDED, actor)

    async def _mailbox_activate(self, request: api.MailboxActivate, actor: Actor) -> api.Reply:
        return await self._set_status(request, MailboxStatus.ACTIVE, actor)

    async def _set_status(
        self,
        request: api.MailboxSuspend | api.MailboxActivate,
        status: MailboxStatus,
        actor: Actor,
    ) -> api.Reply:
        """Idempotent: a mailbox already in ``status`` is answered ``unchanged`` and nothing
        is appended (a MailboxUpdated that changes nothing would only be noise in the audit)."""
        info = self.archive.mailbox(request.mailbox)
        if info.status == status:
            return api.Mailbox(id=request.id, mailbox=await self._view(info), unchanged=True)
        info = await self.archive.update_mailbox(info.mailbox_id, status=status, actor=actor)
        return api.Mailbox(id=request.id, mailbox=await self._view(info))

    async def _mailbox_passwd(self, request: api.MailboxPasswd, actor: Actor) -> api.Reply:
        arrived = trio.current_time()
        _check_chosen_password(request.new_password)
        mailbox_id = self.archive.mailbox(request.mailbox).mailbox_id
        wait = self.passwd_throttle.wait(mailbox_id)
        if wait is not None:
            await trio.sleep_until(arrived + self.failure_delay)
            raise ApiError(
                ErrorCode.THROTTLED,
                f"too many wrong passwords for mailbox {mailbox_id}: try again in {wait:.0f} s",
                retry_after=round(wait, 1),
            )
        try:
            password = await self.archive.change_password(
                mailbox_id, request.old_password, request.new_password, actor=actor
            )
        except WrongPassword:
            self.passwd_throttle.failed(mailbox_id)
            await trio.sleep_until(arrived + self.failure_delay)
            raise
        self.passwd_throttle.succeeded(mailbox_id)
        info = self.archive.mailbox(mailbox_id)
        return api.MailboxPasswordChanged(
            id=request.id, mailbox=await self._view(info), password=password
        )

    async def _mailbox_reset(self, request: api.MailboxReset, actor: Actor) -> api.Reply:
        if not request.confirm:
            raise ApiError(
                ErrorCode.BAD_REQUEST,
                "mailbox.reset needs confirm: true — every message stored so far in the "
                "mailbox becomes unreadable forever",
            )
        _check_chosen_password(request.new_password)
        before = self.archive.messages(request.mailbox)
        password, lost = await self.archive.reset_password(
            request.mailbox, request.new_password, actor=actor
        )
        lost_bytes = sum(m.size for m in before)
        info = self.archive.mailbox(request.mailbox)
        return api.MailboxPasswordReset(
            id=request.id,
            mailbox=await self._view(info),
            password=password,
            unreadable_messages=lost,
            unreadable_bytes=lost_bytes,
            warning=RESET_WARNING.format(
                what=f"The {lost} message{'s' if lost != 1 else ''} ({lost_bytes} bytes)"
            ),
        )

    async def _mailbox_delete(self, request: api.MailboxDelete, actor: Actor) -> api.Reply:
        mailbox_id = self.archive.mailbox(request.mailbox).mailbox_id
        purged = await self.archive.delete_mailbox(
            request.mailbox, purge=request.purge, actor=actor
        )
        return api.MailboxDeleted(id=request.id, mailbox_id=mailbox_id, purged_messages=purged)

    async def _mailbox_purge_unreadable(
        self, request: api.MailboxPurgeUnreadable, actor: Actor
    ) -> api.Reply:
        """Expunge what a reset made unreadable (MessagesExpunged, the admin as actor)."""
        mailbox_id = self.archive.mailbox(request.mailbox).mailbox_id
        lost = unreadable_messages(self.archive, mailbox_id)
        purged = await self.archive.expunge(mailbox_id, [m.message_id for m in lost], actor=actor)
        return api.MailboxUnreadablePurged(
            id=request.id,
            mailbox=await self._view(self.archive.mailbox(mailbox_id)),
            purged_messages=purged,
            purged_bytes=sum(m.size for m in lost) if purged else 0,
        )

    async def _admin_passwd(self, request: api.AdminPasswd, actor: Actor) -> api.Reply:
        if not await self.accounts.change_password(
            request.old_password, request.new_password, actor
        ):
            raise ApiError(ErrorCode.BAD_CREDENTIALS, "the old admin password is wrong")
        return api.Done(id=request.id)

    async def _token_create(self, request: api.TokenCreate, actor: Actor) -> api.Reply:
        token, stored = await self.accounts.create_token(
            request.name, request.expires_in_days, actor
        )
        return api.TokenCreated(id=request.id, token=token, info=_token_view(stored))

    async def _token_list(self, request: api.TokenList, actor: Actor) -> api.Reply:
        views = tuple(_token_view(t) for t in self.accounts.tokens())
        return api.Tokens(id=request.id, tokens=views)

    async def _token_revoke(self, request: api.TokenRevoke, actor: Actor) -> api.Reply:
        if not await self.accounts.revoke_token(request.token_id, actor):
            raise ApiError(ErrorCode.NO_SUCH_TOKEN, f"no token {request.token_id}")
        return api.Done(id=request.id)


def _check_chosen_password(password: str | None) -> None:
    if password is not None and len(password) < MIN_PASSWORD:
        raise InvalidValue(f"a chosen password must be at least {MIN_PASSWORD} characters")


def _token_view(stored: ApiToken) -> api.TokenView:
    return api.TokenView(
        token_id=stored.token_id,
        name=stored.name,
        created_at=stored.created_at,
        expires_at=stored.expires_at,
    )


def _op(request: api.Request) -> str:
    tag: str = type(request).__struct_config__.tag  # type: ignore[assignment]
    return tag


def _mailbox_of(request: api.Request) -> str:
    mailbox = getattr(request, "mailbox", None)
    return mailbox if isinstance(mailbox, str) else ""
