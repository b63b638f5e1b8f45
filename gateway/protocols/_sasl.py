"""SASL PLAIN (RFC 4616) and LOGIN, shared by the SMTP and POP3 machines (server role) and the
proxies' upstream sessions (client role). Pure: bytes and text in, values or SaslError out.

LOGIN is the widely deployed, never standardized mechanism (draft-murchison-sasl-login): the
server sends the base64 challenges "Username:" and "Password:", the client answers each with
one base64 line. Its challenges are fixed text, so they are constants here.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final, Literal

__all__ = [
    "CANCEL",
    "LOGIN_PASSWORD_CHALLENGE",
    "LOGIN_USERNAME_CHALLENGE",
    "SaslError",
    "decode_login_field",
    "decode_plain",
    "encode",
    "plain_response",
]

# RFC 4954 §4 (SMTP), RFC 5034 §4 (POP3): the client's response that cancels the exchange.
CANCEL: Final = b"*"
LOGIN_USERNAME_CHALLENGE: Final = "VXNlcm5hbWU6"  # base64 "Username:"
LOGIN_PASSWORD_CHALLENGE: Final = "UGFzc3dvcmQ6"  # noqa: S105 - base64 "Password:"

# No control character in a name or a password: they would end up in protocol lines and logs.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class SaslError(ValueError):
    """A client's response cannot be used: ``kind`` "malformed" (bad base64, wrong fields,
    not UTF-8, empty or control characters) or "authzid" (asks to act as someone else)."""

    def __init__(self, kind: Literal["malformed", "authzid"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _decode(response: bytes) -> bytes:
    """A base64 response; "=" is the empty response (RFC 4954 §4, RFC 5034 §4)."""
    if response == b"=":
        return b""
    try:
        return binascii.a2b_base64(response, strict_mode=True)
    except binascii.Error as exc:
        raise SaslError("malformed", "bad base64") from exc


def _text(raw: bytes) -> str:
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise SaslError("malformed", "not UTF-8") from exc
    if not text or _CONTROL.search(text):
        raise SaslError("malformed", "empty, or control characters")
    return text


def decode_plain(response: bytes) -> tuple[str, str]:
    """RFC 4616: ``[authzid] NUL authcid NUL passwd``, base64. Returns (authcid, password);
    an authzid other than empty or the authcid itself is refused."""
    parts = _decode(response).split(b"\0")
    if len(parts) != 3:
        raise SaslError("malformed", "not three fields")
    try:
        authzid = parts[0].decode()
    except UnicodeDecodeError as exc:
        raise SaslError("malformed", "not UTF-8") from exc
    authcid, password = _text(parts[1]), _text(parts[2])
    if authzid not in ("", authcid):
        raise SaslError("authzid", "authorization identity differs")
    return authcid, password


def decode_login_field(response: bytes) -> str:
    """One LOGIN answer (the username, or the password), base64."""
    return _text(_decode(response))


def encode(text: str) -> str:
    """Base64 of UTF-8 ``text``; "=" for the empty string."""
    return base64.b64encode(text.encode()).decode() if text else "="


def plain_response(username: str, password: str, authzid: str = "") -> str:
    """The base64 PLAIN message (RFC 4616) a client sends."""
    return encode(f"{authzid}\0{username}\0{password}")
