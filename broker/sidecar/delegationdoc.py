"""The OpenAPI description of the delegation routes (``broker.sidecar.tokenexchange``)."""

from __future__ import annotations

from typing import Any

from broker.core.delegation import (
    EXCHANGE_GRANT_TYPE,
    GRANT_HTTP_STATUS,
    GRANT_TOKEN_TYPE,
    GrantRequest,
)


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REFUSAL = {"type": "object", "required": ["outcome", "reason", "rule", "detail"]}
_OAUTH_ERROR = {"type": "object", "required": ["error", "error_description", "reason"]}
_EXCHANGE_FORM = {
    "type": "object",
    "required": ["grant_type", "subject_token", "subject_token_type", "scope"],
    "properties": {
        "grant_type": {"const": EXCHANGE_GRANT_TYPE},
        "subject_token": {
            "type": "string",
            "description": "the grant, as POST /v1/delegations gave it",
        },
        "subject_token_type": {"const": GRANT_TOKEN_TYPE},
        "requested_token_type": {"type": "string"},
        "scope": {"type": "string", "description": "the one action wanted"},
        "audience": {"type": "string"},
        "resource": {"type": "string"},
        "inputs": {"type": "string", "description": "the call's inputs, a JSON object"},
        "workflow": {"type": "string"},
        "request_id": {"type": "string"},
    },
}
_GRANT_ID = {
    "name": "grant_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^dg_[0-9a-f]{24}$"},
}


def delegation_paths() -> dict[str, Any]:
    codes = ", ".join(f"`{r.value}` ({s})" for r, s in GRANT_HTTP_STATUS.items())
    return {
        "/v1/delegations": {
            "post": {
                "summary": "Grant a named sub-agent a part of this agent's scope (only narrower)",
                "description": f"Refusal codes: {codes}. `rule` names what would widen.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/GrantRequest"}
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        {"type": "object", "required": ["grant", "grant_id"]}, "the grant"
                    ),
                    "400": _json({"type": "object"}, "malformed request"),
                    "401": _json(_REFUSAL, "parent_grant is not a grant of this sidecar"),
                    "403": _json(_REFUSAL, "refused: it would widen, or the parent is revoked"),
                    "503": _json({"type": "object"}, "Vault or the audit trail unavailable"),
                },
            },
            "get": {
                "summary": "This sidecar's live grants, with their chains and spending",
                "responses": {"200": _json({"type": "object"}, "the grants")},
            },
        },
        "/v1/delegations/{grant_id}/revoke": {
            "post": {
                "summary": "Revoke a grant and every grant below it",
                "parameters": [_GRANT_ID],
                "responses": {
                    "200": _json({"type": "object", "required": ["revoked"]}, "the revoked ids"),
                    "404": _json({"type": "object"}, "no such grant"),
                    "503": _json({"type": "object"}, "Vault unavailable"),
                },
            }
        },
        "/v1/token": {
            "post": {
                "summary": "RFC 8693 token exchange: a grant for an action token with act",
                "requestBody": {
                    "required": True,
                    "content": {"application/x-www-form-urlencoded": {"schema": _EXCHANGE_FORM}},
                },
                "responses": {
                    "200": _json(
                        {"type": "object", "required": ["access_token", "issued_token_type"]},
                        "an action token for the root agent, the sub-agents in act",
                    ),
                    "400": _json(_OAUTH_ERROR, "refused (RFC 6749 error, our reason beside)"),
                    "429": _json(_OAUTH_ERROR, "rate or concurrency limit; see Retry-After"),
                    "503": _json(_OAUTH_ERROR, "Vault or the audit trail unavailable"),
                },
            }
        },
    }


def delegation_schemas() -> dict[str, Any]:
    """GrantRequest and the models it nests, each a component: a nested model's ``$defs`` ref
    would point at the document's root, where nothing resolves it."""
    schema = GrantRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    nested = schema.pop("$defs", {})
    return {"GrantRequest": schema, **nested}
