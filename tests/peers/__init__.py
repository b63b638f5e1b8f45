"""Real mail software as test peers: a private Postfix, swaks and smtp-source (README.md here).

Installed by tests/peers/install.sh; a test that needs a missing peer fails, never skips.
"""

from .postfix import (
    PostfixError,
    PostfixInstance,
    QueueEntry,
    open_private_postfix,
    private_postfix,
)
from .tools import ToolError, free_port, require, smtp_source, swaks, wait_for_port

__all__ = [
    "PostfixError",
    "PostfixInstance",
    "QueueEntry",
    "ToolError",
    "free_port",
    "open_private_postfix",
    "private_postfix",
    "require",
    "smtp_source",
    "swaks",
    "wait_for_port",
]
