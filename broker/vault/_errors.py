"""Map hvac and transport failures to ``BackendUnavailable`` / ``PermissionDenied``.

Messages name the operation and Vault's address, never a token or secret."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import hvac.exceptions
import requests

from broker.core.errors import BackendUnavailable, BrokerError, NotFound, PermissionDenied


@contextmanager
def translate_errors(operation: str, addr: str = "") -> Iterator[None]:
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


_CERT_REASON = re.compile(r"certificate verify failed: ([^()'\"]+)|(hostname [^()'\"]+)")


# The server wanted a client certificate and got none (TLS 1.3 and 1.2 alerts).
_CLIENT_CERT_WANTED = re.compile(r"alert certificate required|alert bad certificate", re.I)


def tls_problem(text: str, addr: str, operation: str) -> str:
    """A certificate failure said plainly, with the variable that fixes it."""
    if _CLIENT_CERT_WANTED.search(text):
        return (
            f"Vault at {addr} requires a client certificate and refused ours ({operation}); set "
            "VAULT_CLIENT_CERT and VAULT_CLIENT_KEY (or BAO_CLIENT_CERT/BAO_CLIENT_KEY) to a "
            "certificate its listener trusts and its key"
        )
    found = _CERT_REASON.search(text)
    reason = next((g for g in found.groups() if g), "").strip() if found else "TLS handshake failed"
    return (
        f"Vault's TLS certificate at {addr} was not accepted ({operation}): {reason}; set "
        "VAULT_CACERT (or BAO_CACERT) to the CA certificate that signed it"
    )
