"""Which certificate the listeners serve (SPEC.md 12.1, 12.4), loaded at the start and again
on a reload (SIGHUP) or when the journal says the ACME CA gave a new one.

The choice, every time: the configured certificate; else the one from the ACME CA, once
there is one; else the data folder's self-signed one (made by the journal on its first
start; a worker only reads it). A reload swaps it in for new handshakes only (sessions keep
theirs), and one that fails to load keeps the previous one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from ..config import Config
from ..log import DataDir
from ..services.archive import Archive
from ..tls import TLSContextHolder, make_self_signed
from .sockets import StartupError

__all__ = ["Certificates"]

logger = logging.getLogger("gateway")


class Certificates:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.data = DataDir(Path(config.data_dir))

    def load(self, archive: Archive | None) -> TLSContextHolder:
        """The certificate to serve at the start (blocking). ``archive``: the journal's,
        which makes the self-signed certificate if there is none; None for a worker."""
        chosen = self._chosen()
        if chosen is not None:
            try:
                return self._holder(*chosen)
            except StartupError as exc:
                if self.config.tls.certificate:
                    raise
                logger.error(
                    "event=acme-certificate-unusable reason=%r (the self-signed certificate "
                    "serves until a new one comes)",
                    str(exc),
                )
        if archive is not None:
            cert, key = archive.data.read_or_create_tls(
                lambda: make_self_signed(
                    self.config.hostname, [listener.address for listener in self.config.listeners]
                )
            )
        else:
            cert, key = self.data.tls_certificate
        return self._holder(cert, key)

    async def reload(self, holder: TLSContextHolder, event: str) -> None:
        """Serve the certificate files as they are now in ``holder`` for new handshakes;
        logged as ``event``. A failed load keeps the old one."""
        cert, key = self._chosen() or (holder.cert_path, holder.key_path)
        try:
            await trio.to_thread.run_sync(holder.use, cert, key)
        except (OSError, ValueError) as exc:
            logger.error("event=reload-failed reason=%r (the previous certificate stays)", str(exc))
            return
        _log(event, holder)

    def _chosen(self) -> tuple[Path, Path] | None:
        """The configured certificate and key, or the ACME CA's (chain and key in one file)
        if on and there; None: the self-signed one."""
        tls = self.config.tls
        if tls.certificate:
            return Path(tls.certificate), Path(tls.key)
        if tls.acme.directory and self.data.acme_certificate_path.exists():
            return self.data.acme_certificate_path, self.data.acme_certificate_path
        return None

    def _holder(self, cert: Path, key: Path) -> TLSContextHolder:
        try:
            holder = TLSContextHolder(cert, key)
        except (OSError, ValueError) as exc:
            raise StartupError(
                f"cannot load the TLS certificate {cert} and key {key}: {exc}"
            ) from None
        _log("tls-certificate", holder)
        return holder


def _log(event: str, holder: TLSContextHolder) -> None:
    subject, fingerprint, expires = holder.summary()
    logger.info(
        "event=%s subject=%r sha256=%s expires=%s",
        event,
        subject,
        fingerprint,
        expires.date().isoformat(),
    )
