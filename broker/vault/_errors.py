"""Map hvac and transport failures to ``BackendUnavailable`` / ``PermissionDenied``.

Messages name the operation and Vault's address, never a token or secret."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from broker.core.errors import BackendUnavailable, BrokerError, NotFound, PermissionDenied
from broker.vault.calls import tls_problem

__all__ = ["tls_problem", "translate_errors"]


@contextmanager
def translate_errors(operation: str, addr: str = "") -> Iterator[None]:
    # Here, not at the top: the sidecar imports modules that use this on the command line's
    # paths only, and never loads hvac or requests (``broker.vault.calls``).
    import hvac.exceptions
    import requests

    where = f" at {addr}" if addr else ""
    try:
        yield
    except BrokerError:
        raise
    except hvac.exceptions.Forbidden as exc:
        raise PermissionDenied(f"Vault{where} refused {operation}: permission denied") from exc
    except hvac.exceptions.InvalidPath as exc:
        raise NotFound(f"Vault{where} has nothing at the path for {operation}") from exc
    except hvac.exceptions.VaultDown as exc:
        raise BackendUnavailable(f"Vault{where} is sealed or down ({operation})") from exc
    except hvac.exceptions.VaultError as exc:
        reason = "; ".join(str(e) for e in (exc.errors or [])) or type(exc).__name__
        raise BackendUnavailable(f"Vault{where} failed {operation}: {reason[:200]}") from exc
    except requests.exceptions.SSLError as exc:
        raise BackendUnavailable(tls_problem(str(exc), addr, operation)) from exc
    except requests.exceptions.RequestException as exc:
        raise BackendUnavailable(
            f"Vault is unreachable{where} ({operation}): {type(exc).__name__}"
        ) from exc
