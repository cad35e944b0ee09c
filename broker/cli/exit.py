"""The exit codes of every ``broker`` command, in one table, and the one place that maps a
failure (a ``BrokerError``) to its code.

Scripts and CI read these; ``broker --help`` and README.md print the same table."""

from __future__ import annotations

from broker.core.errors import (
    AuditUnavailable,
    BackendUnavailable,
    BrokerError,
    ConfigError,
    PermissionDenied,
    RequestError,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE: what a C tool killed by the closed pipe reports

EXIT_TABLE: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "ok: the check passed, the command did what it says"),
    (EXIT_FAILED, "a check failed, or the broker or Vault refused (findings on stdout)"),
    (EXIT_USAGE, "usage: bad option, missing or unreadable input file"),
    (
        EXIT_UNAVAILABLE,
        "backend unavailable or not consulted: Vault/OpenBao or the audit trail could not "
        "be reached, so the verdict is incomplete (also `audit verify --offline`)",
    ),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
    (EXIT_CLOSED_PIPE, "stdout closed early (piped to `head`); nothing printed on stderr"),
)

# Most specific first: PermissionDenied is a BackendUnavailable, but Vault answered "no".
_BY_ERROR: tuple[tuple[type[BrokerError], int], ...] = (
    (PermissionDenied, EXIT_FAILED),
    (BackendUnavailable, EXIT_UNAVAILABLE),
    (AuditUnavailable, EXIT_UNAVAILABLE),
    (ConfigError, EXIT_USAGE),
    (RequestError, EXIT_USAGE),
)


def exit_code(exc: BrokerError) -> int:
    """The exit code for a failure; any other ``BrokerError`` is a refusal (1)."""
    for cls, code in _BY_ERROR:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILED


def epilog() -> str:
    rows = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_TABLE)
    return f"exit codes:\n{rows}\n\nshell completion: broker completion bash|zsh|tcsh"
