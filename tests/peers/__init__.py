"""Real mail software as test peers: a private Postfix (a relay, or a sink for the SMTP
benchmark), a private Dovecot, a private Postfix submission server with SASL through Dovecot,
swaks, smtp-source and fetchmail; and private PostgreSQL clusters with standbys for the fleet
store (README.md here).

Installed by `make test` (tools/system-packages.sh); a test that needs a missing peer fails,
never skips.
"""

from .dovecot import (
    DovecotError,
    DovecotInstance,
    open_private_dovecot,
    pop3_octets,
    private_dovecot,
)
from .postfix import (
    PostfixError,
    PostfixInstance,
    QueueEntry,
    open_private_postfix,
    private_postfix,
)
from .postgres import (
    PostgresError,
    PostgresServer,
    fleet_dsn,
    open_private_postgres,
    open_standby,
    private_postgres,
    with_standby,
)
from .submission import (
    Delivery,
    SubmissionError,
    SubmissionInstance,
    open_private_submission,
    private_submission,
)
from .tools import (
    Fetched,
    ToolError,
    fetchmail,
    free_port,
    require,
    smtp_source,
    swaks,
    wait_for_port,
)

__all__ = [
    "Delivery",
    "DovecotError",
    "DovecotInstance",
    "Fetched",
    "PostfixError",
    "PostfixInstance",
    "PostgresError",
    "PostgresServer",
    "QueueEntry",
    "SubmissionError",
    "SubmissionInstance",
    "ToolError",
    "fetchmail",
    "fleet_dsn",
    "free_port",
    "open_private_dovecot",
    "open_private_postfix",
    "open_private_postgres",
    "open_private_submission",
    "open_standby",
    "pop3_octets",
    "private_dovecot",
    "private_postfix",
    "private_postgres",
    "private_submission",
    "require",
    "smtp_source",
    "swaks",
    "wait_for_port",
    "with_standby",
]
