"""Scope manifest models: what one agent may do, with what inputs, under which limits, and
which humans own each action. Pure data; ``broker.scopes.loader`` reads the YAML.

Invariants enforced at construction (a manifest that breaks one does not load):
every action names an accountable human; credential TTLs are at most
``MAX_CREDENTIAL_TTL_SECONDS``; every cost names a declared budget and every input it reads
is a required, non-negative number; approval conditions and ``redact`` name declared inputs;
constraints fit their input's type and patterns compile. Durations are stored as int seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from broker.core.constraints import (
    CONDITION_OPS,
    CONDITION_SCHEMA,
    INPUT_CHECKS,
    INPUT_TYPES,
    condition_problems,
    condition_terms,
    regex_problem,
    valid_domain,
)
from broker.core.manifesttypes import (
    DEFAULT_APPROVAL_EXPIRY_SECONDS,
    MAX_CREDENTIAL_TTL_SECONDS,
    RESERVED_INPUT_NAMES,
    ActionName,
    AgentId,
    BudgetName,
    Duration,
    Email,
    InputName,
    Name,
    Number,
    Path,
    Problems,
    Scalar,
    Ttl,
    _listify,
    canonical_json,
    parse_duration,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# -- limits --------------------------------------------------------------------------------


# What a replica does with a shared limit when the fleet's ledger store is unreachable and its
# slice is spent: refuse (503 ledger_unavailable), or (calls-only rate limits) keep going on a
# local share of limit / replicas, which is no longer exact across the fleet.
Fallback = Literal["fail_closed", "local_share"]


class Budget(_Frozen):
    """An agent-wide budget over a fixed window aligned to the epoch (1d = a UTC day)."""

    limit: Number = Field(gt=0)
    per: Duration
    unit: Name = "units"
    exact: bool = Field(
        default=False,
        description="replicas reserve per call in the fleet's ledger, never a slice ahead",
    )
    fallback: Fallback = Field(
        default="fail_closed",
        description="budgets always fail closed when the fleet's ledger is unreachable",
    )


class RateLimit(_Frozen):
    """At most ``limit`` allowed calls in any sliding window of ``per`` seconds (per replica);
    across a fleet of replicas, at most ``limit`` in each window of ``per`` aligned to the epoch."""

    limit: Annotated[int, Strict()] = Field(ge=1)
    per: Duration
    fallback: Fallback = Field(
        default="fail_closed",
        description="local_share: with the fleet's ledger unreachable, limit / replicas each",
    )


RateSpec = Annotated[
    tuple[RateLimit, ...],
    BeforeValidator(_listify, json_schema_input_type=RateLimit | list[RateLimit]),
]


# -- credentials ---------------------------------------------------------------------------


class JwtCredential(_Frozen):
    kind: Literal["jwt"]
    audience: Name = Field(
        description="the token's aud: a gateway name or an RFC 8707 resource URI"
    )
    ttl: Ttl
    alg: Literal["EdDSA", "ES256"] = Field(
        default="EdDSA",
        description="signing algorithm: EdDSA, or ES256 for gateways that know no EdDSA",
    )
    dpop: Literal["optional", "required"] = Field(
        default="optional",
        description="required: mint only for a request with a DPoP proof (RFC 9449), so the "
        "token is bound to the agent's key; optional: bound when a proof comes",
    )


def _no_root(policies: tuple[str, ...]) -> tuple[str, ...]:
    if "root" in policies:
        raise ValueError("the root policy is never granted to an agent")
    return policies


class VaultTokenCredential(_Frozen):
    kind: Literal["vault_token"]
    policies: Annotated[tuple[Name, ...], AfterValidator(_no_root)] = Field(min_length=1)
    ttl: Ttl
    uses: Annotated[int, Strict()] = Field(default=1, ge=1)


class DynamicCredential(_Frozen):
    kind: Literal["dynamic"]
    mount: Name = "database"
    role: Name
    ttl: Ttl


CredentialSpec = Annotated[
    JwtCredential | VaultTokenCredential | DynamicCredential, Field(discriminator="kind")
]


# -- inputs --------------------------------------------------------------------------------


def _doc(name: str) -> str:
    return INPUT_CHECKS[name].description


class InputSpec(_Frozen):
    """One declared input. Constraint fields mirror ``constraints.INPUT_CHECKS``."""

    type: Literal["string", "integer", "number", "boolean"]
    required: Annotated[bool, Strict()] = True
    min: Number | None = Field(default=None, description=_doc("min"))
    max: Number | None = Field(default=None, description=_doc("max"))
    pattern: str | None = Field(default=None, description=_doc("pattern"))
    one_of: tuple[Scalar, ...] | None = Field(
        default=None, min_length=1, description=_doc("one_of")
    )
    max_length: Annotated[int, Strict()] | None = Field(
        default=None, ge=0, description=_doc("max_length")
    )
    domain_in: tuple[str, ...] | None = Field(
        default=None, min_length=1, description=_doc("domain_in")
    )

    def constraints(self) -> dict[str, Any]:
        """The constraints this input sets, in table order."""
        return {n: getattr(self, n) for n in INPUT_CHECKS if getattr(self, n) is not None}

    @model_validator(mode="after")
    def _coherent(self) -> InputSpec:
        problems = list(_input_problems(self))
        if problems:
            raise Problems(problems)
        return self


def _input_problems(spec: InputSpec) -> Iterator[tuple[Path, str]]:
    for name in spec.constraints():
        if spec.type not in INPUT_CHECKS[name].applies_to:
            yield (name,), f"'{name}' does not apply to type {spec.type}"
    if spec.min is not None and spec.max is not None and spec.min > spec.max:
        yield ("min",), f"min {spec.min} is greater than max {spec.max}"
    if spec.pattern is not None and (why := regex_problem(spec.pattern)):
        yield ("pattern",), why
    type_ok = INPUT_TYPES[spec.type].check
    for value in spec.one_of or ():
        if not type_ok(value):
            yield ("one_of",), f"{value!r} is not of type {spec.type}"
    for domain in spec.domain_in or ():
        if not valid_domain(domain):
            yield ("domain_in",), f"{domain!r} is not a lower-case domain name like acme.example"


# -- approval conditions -------------------------------------------------------------------


def _check_condition(when: dict[str, Any]) -> dict[str, Any]:
    problems = list(condition_problems(when))
    if problems:
        raise Problems(problems)
    return when


Condition = Annotated[
    dict[str, Any], AfterValidator(_check_condition), WithJsonSchema(CONDITION_SCHEMA)
]


class Approval(_Frozen):
    """Human approval. An empty ``when`` (the default) means every call needs approval."""

    when: Condition = Field(default_factory=dict)
    approvers: tuple[Email, ...] = Field(min_length=1)
    reason: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,127}$")] = (
        "needs_human_approval"
    )
    expires: Duration = DEFAULT_APPROVAL_EXPIRY_SECONDS
    message: str | None = Field(
        default=None,
        max_length=500,
        description="the human-readable explanation recorded as the audit record's output",
    )


# -- actions and the manifest --------------------------------------------------------------

CostValue = Annotated[
    Annotated[float, Strict(), Field(ge=0)]
    | Annotated[str, StringConstraints(pattern=r"^inputs\.[a-z_][a-z0-9_]{0,62}$")],
    Field(description="a non-negative number, or inputs.<name> to charge an input's value"),
]


class Action(_Frozen):
    """One action type the agent may take, and the humans who own it (RACI)."""

    accountable: Email
    consulted: tuple[Email, ...] = ()
    informed: tuple[Email, ...] = ()
    credential: CredentialSpec
    inputs: dict[InputName, InputSpec] = Field(default_factory=dict)
    cost: dict[BudgetName, CostValue] = Field(default_factory=dict)
    rate: RateSpec = ()
    approval: Approval | None = None
    redact: tuple[InputName, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> Action:
        problems = list(_action_problems(self))
        if problems:
            raise Problems(problems)
        return self


def _action_problems(action: Action) -> Iterator[tuple[Path, str]]:
    declared = action.inputs
    for name in declared.keys() & RESERVED_INPUT_NAMES:
        yield ("inputs", name), f"'{name}' is reserved and cannot name an input"
    for i, name in enumerate(action.redact):
        if name not in declared:
            yield ("redact", str(i)), f"'{name}' is not a declared input"
    for budget, value in action.cost.items():
        if isinstance(value, str):
            yield from _cost_input_problems(declared, budget, value[len("inputs.") :])
    if action.approval is not None:
        for path, name, op, operand in condition_terms(action.approval.when):
            yield from _term_problems(declared, ("approval", "when", *path), name, op, operand)


def _cost_input_problems(
    declared: dict[str, InputSpec], budget: str, name: str
) -> Iterator[tuple[Path, str]]:
    spec = declared.get(name)
    path = ("cost", budget)
    if spec is None:
        yield path, f"'inputs.{name}' is not a declared input"
    elif spec.type not in ("integer", "number") or not spec.required:
        yield path, f"'inputs.{name}' must be a required integer or number input"
    elif spec.min is None or spec.min < 0:
        yield path, f"'inputs.{name}' must declare min >= 0 so a call can never refund a budget"


def _term_problems(
    declared: dict[str, InputSpec], path: Path, name: str, op: str, operand: Any
) -> Iterator[tuple[Path, str]]:
    spec = declared.get(name)
    if spec is None:
        yield path[:-1], f"'{name}' is not a declared input"
    elif spec.type not in CONDITION_OPS[op].applies_to:
        yield path, f"operator '{op}' does not apply to input '{name}' of type {spec.type}"
    elif CONDITION_OPS[op].operand in ("scalar", "list"):
        type_ok = INPUT_TYPES[spec.type].check
        values = operand if isinstance(operand, list | tuple) else [operand]
        for value in values:
            if not type_ok(value):
                yield path, f"{value!r} is not of input '{name}' type {spec.type}"


class DelegationPolicy(_Frozen):
    """Whether and how far this agent may hand part of its scope to sub-agents
    (``broker.scopes.delegation``). Without it, the agent grants nothing."""

    max_depth: Annotated[int, Strict()] = Field(ge=1, le=8, description="grants below grants")
    max_ttl: Ttl = Field(description="the longest a grant of this agent's own may live")


class Manifest(_Frozen):
    """One agent's scope manifest. ``content_hash`` identifies exactly this content."""

    agent: AgentId
    policy_version: Name
    system_owner: Email
    risk_owner: Email
    budgets: dict[BudgetName, Budget] = Field(default_factory=dict)
    concurrency: Annotated[int, Strict()] | None = Field(
        default=None, ge=1, description="max live credentials at once; omitted means no cap"
    )
    rate: RateSpec = ()
    actions: dict[ActionName, Action] = Field(default_factory=dict)
    delegation: DelegationPolicy | None = None

    _content_hash: str = PrivateAttr(default="")

    @property
    def content_hash(self) -> str:
        """``sha256:<hex>`` over the canonical JSON of the validated manifest."""
        return self._content_hash

    @model_validator(mode="after")
    def _budgets_and_hash(self) -> Manifest:
        problems: list[tuple[Path, str]] = [
            (("actions", name, "cost", budget), f"'{budget}' is not a declared budget")
            for name, action in self.actions.items()
            for budget in action.cost
            if budget not in self.budgets
        ]
        problems += _sharing_problems(self)
        if problems:
            raise Problems(problems)
        dumped = self.model_dump(mode="json")
        if dumped["delegation"] is None:
            del dumped["delegation"]  # manifests without it keep the hash they always had
        digest = hashlib.sha256(canonical_json(dumped)).hexdigest()
        self._content_hash = f"sha256:{digest}"
        return self


def _sharing_problems(manifest: Manifest) -> list[tuple[Path, str]]:
    """Budgets the fleet cannot share as declared: only a calls-only rate limit may fall back
    to a local share; money and approval-gated budgets always fail closed."""
    gated = {b for a in manifest.actions.values() if a.approval is not None for b in a.cost}
    why = "budget_not_shareable: a budget fails closed when the fleet's ledger is unreachable"
    return [
        (("budgets", name, "fallback"), f"{why} ({reason}); only rate limits may fall back")
        for name, budget in manifest.budgets.items()
        if budget.fallback != "fail_closed"
        for reason in [
            "money"
            if budget.unit != "calls"
            else "approval-gated"
            if name in gated
            else "a calls budget"
        ]
    ]


def manifest_json_schema() -> dict[str, Any]:
    """The published JSON Schema for scope manifests (validation shape)."""
    schema = Manifest.model_json_schema(mode="validation")
    return {
        **schema,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Agent credential broker scope manifest",
    }


__all__ = [
    "MAX_CREDENTIAL_TTL_SECONDS",
    "Action",
    "Approval",
    "Budget",
    "CredentialSpec",
    "DelegationPolicy",
    "DynamicCredential",
    "InputSpec",
    "JwtCredential",
    "Manifest",
    "Problems",
    "RateLimit",
    "VaultTokenCredential",
    "canonical_json",
    "manifest_json_schema",
    "parse_duration",
]
