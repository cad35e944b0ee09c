"""Vault child tokens: created under the sidecar's own token through the token role of the
agent's action, so revoking the sidecar's token revokes every child, and Vault itself caps
each child at the manifest's policies, TTL and use count (``broker.vault.bootstrap``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from broker.vault._errors import translate_errors
from broker.vault.calls import Call, Steps, drive, expect
from broker.vault.layout import action_token_role

if TYPE_CHECKING:
    import hvac


@dataclass(frozen=True)
class ChildToken:
    token: str = field(repr=False)
    accessor: str
    ttl: int
    policies: tuple[str, ...]


def create_child_token(
    client: hvac.Client,
    agent: str,
    action: str,
    *,
    policies: list[str],
    ttl: int,
    uses: int,
    meta: dict[str, str],
    addr: str = "",
) -> ChildToken:
    with translate_errors("child token creation", addr):
        result = client.auth.token.create(
            role_name=action_token_role(agent, action),
            policies=policies,
            ttl=f"{ttl}s",
            num_uses=uses,
            renewable=False,
            meta=meta,
            no_default_policy=True,
        )
    auth = result["auth"]
    return ChildToken(
        token=auth["client_token"],
        accessor=auth["accessor"],
        ttl=int(auth["lease_duration"]),
        policies=tuple(auth["policies"]),
    )


def create_token_raw(
    client: hvac.Client, agent: str, action: str, policies: list[str], addr: str = ""
) -> str:
    """The bare Vault operation a ``vault_token`` mint rests on (for the bench baseline)."""
    with translate_errors("child token creation", addr):
        result = client.auth.token.create(
            role_name=action_token_role(agent, action), policies=policies, ttl="30s", num_uses=1
        )
    return str(result["auth"]["accessor"])


def revoke_accessor(client: hvac.Client, accessor: str, addr: str = "") -> None:
    with translate_errors("token revocation", addr):
        client.auth.token.revoke_accessor(accessor)


def revoke_child_token(client: hvac.Client, token: str, addr: str = "") -> None:
    """Revoke a token by its secret: what a sidecar may do to a child it minted itself."""
    drive(client, revoke_child_token_steps(token))


def revoke_child_token_steps(token: str) -> Steps[None]:
    yield from expect(Call("POST", "auth/token/revoke", "token revocation", {"token": token}))
