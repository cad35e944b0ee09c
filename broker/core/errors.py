"""One exception tree for failures; refusals are values (``ReasonCode``), not exceptions.

::

    BrokerError                      code, http_status, detail
    ├── ConfigError                  bad settings or command-line input          (400)
    ├── ManifestError                a manifest does not load; carries every issue (422)
    ├── RequestError                 a malformed agent request                   (400)
    │   ├── PayloadTooLarge                                                      (413)
    │   ├── RequestTimeout           the body did not arrive in time             (408)
    │   └── NotFound                                                             (404)
    ├── ControlStateInvalid          a control document in Vault has a mistyped value (503)
    ├── LedgerInvalid                the fleet usage ledger document is nonsense   (503)
    ├── BackendUnavailable           Vault/OpenBao unreachable, sealed or refusing (503)
    │   └── PermissionDenied         Vault refused the caller's token             (403)
    ├── AuditUnavailable             the audit trail cannot be written           (503)
    ├── VerificationError            an action token is not acceptable           (401)
    └── ApprovalError                the approval lifecycle refuses a step       (409)
        └── NotAnApprover            not an approver the manifest lists          (403)
                                     (both in broker.core.approvals, beside their table)

Each class carries a stable ``code``; the HTTP layer renders ``code`` and ``detail`` and
nothing else, so no secret or stack trace can leak through an error body.
"""

from __future__ import annotations


class BrokerError(Exception):
    code = "broker_error"
    http_status = 500

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


class ConfigError(BrokerError):
    code = "config_invalid"
    http_status = 400


class ManifestError(BrokerError):
    """A manifest that does not load. ``issues`` holds one line per problem found."""

    code = "manifest_invalid"
    http_status = 422

    def __init__(self, detail: str, issues: list[str] | None = None) -> None:
        self.issues = list(issues or [detail])
        if issues and self.issues != [detail]:
            detail = "\n  ".join([detail, *self.issues])
        super().__init__(detail)


class RequestError(BrokerError):
    code = "bad_request"
    http_status = 400


class PayloadTooLarge(RequestError):
    code = "payload_too_large"
    http_status = 413


class RequestTimeout(RequestError):
    code = "request_timeout"
    http_status = 408


class NotFound(RequestError):
    code = "not_found"
    http_status = 404


class ControlStateInvalid(BrokerError):
    """A control document holds a value of the wrong type (say the string ``"false"`` written
    by hand where ``false`` belongs). Refused, never guessed: a sidecar reading it fails closed."""

    code = "control_state_invalid"
    http_status = 503


class LedgerInvalid(BrokerError):
    """The fleet's usage ledger document (``ledger/<agent>``) does not parse: edited by hand,
    say. Refused, never reset: a reset would hand the whole budget out again."""

    code = "ledger_invalid"
    http_status = 503


class BackendUnavailable(BrokerError):
    code = "backend_unavailable"
    http_status = 503


class PermissionDenied(BackendUnavailable):
    code = "permission_denied"
    http_status = 403


class AuditUnavailable(BrokerError):
    code = "audit_unavailable"
    http_status = 503


class VerificationError(BrokerError):
    code = "token_invalid"
    http_status = 401
