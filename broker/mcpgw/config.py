"""The gateway's configuration: which upstream MCP servers exist, how each receives the
credential, and which tool maps to which manifest action. Pure data, loaded from YAML.

Why a separate file and not the manifest: the manifest is the policy that platform and risk
owners review (what may be done, by whom, under which limits); where a tool runs and how a
token reaches it (URLs, commands, header names) is deployment wiring that changes per
environment. Keeping it out of the manifest leaves the manifest's schema and content hash
untouched, and the gateway can never widen the policy: every call is still decided by the
sidecar against the manifest action the tool maps to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from broker.core.errors import ConfigError

ToolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]
UpstreamName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
ActionName = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$", max_length=128)
]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")]
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")]
ArgName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HttpUpstream(_Frozen):
    """A streamable HTTP MCP server; the credential travels in one request header."""

    transport: Literal["http"] = "http"
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
    header: HeaderName = "Authorization"
    scheme: Annotated[str, StringConstraints(pattern=r"^[A-Za-z-]{0,32}$")] = Field(
        default="Bearer", description="prefix of the header value; empty sends the bare token"
    )
    timeout: float = Field(default=30.0, gt=0, le=600)


class StdioUpstream(_Frozen):
    """A stdio MCP server. With ``env``, it is started for each call with that call's
    credential in its environment; with ``argument``, one long-lived process gets each
    call's credential as one extra tool argument (never listed to the model)."""

    transport: Literal["stdio"] = "stdio"
    command: tuple[Annotated[str, StringConstraints(min_length=1)], ...] = Field(min_length=1)
    env: EnvName | None = None
    argument: ArgName | None = None
    environment: dict[EnvName, str] = Field(
        default_factory=dict,
        description="fixed variables for the process; it does not inherit the gateway's",
    )
    pass_env: tuple[EnvName, ...] = Field(
        default=(), description="the gateway's own variables to pass on (VAULT_ADDR...)"
    )
    cwd: str | None = None
    timeout: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="after")
    def _one_way(self) -> StdioUpstream:
        if (self.env is None) == (self.argument is None):
            raise ValueError(
                "a stdio upstream takes the credential through exactly one of env or argument"
            )
        return self


Upstream = Annotated[HttpUpstream | StdioUpstream, Field(discriminator="transport")]


class ToolRoute(_Frozen):
    """One tool the agent sees: the manifest action that decides it, and where it runs."""

    upstream: UpstreamName
    action: ActionName
    tool: ToolName | None = Field(default=None, description="the upstream's name (default: same)")


class GatewayConfig(_Frozen):
    workflow: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")] | None = None
    upstreams: dict[UpstreamName, Upstream] = Field(min_length=1)
    tools: dict[ToolName, ToolRoute] = Field(min_length=1)

    @model_validator(mode="after")
    def _routes_name_upstreams(self) -> GatewayConfig:
        missing = sorted({r.upstream for r in self.tools.values()} - set(self.upstreams))
        if missing:
            raise ValueError(f"tools name undeclared upstreams: {', '.join(missing)}")
        return self

    def upstream_tool(self, name: str) -> str:
        return self.tools[name].tool or name


def _where(exc: ValidationError) -> str:
    first = exc.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "(top)"
    return f"{path}: {first['msg']}"


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway config; a ConfigError names the file and the path inside."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the gateway config: {exc}") from exc
    try:
        return GatewayConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_where(exc)}") from exc
