"""The ``dynamic`` kind against a real OpenBao and a real PostgreSQL: logins Vault mints do what
their role grants and nothing else, and revocation, expiry and root rotation really bite."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import hvac
import psycopg
import pytest

from broker.core.errors import BackendUnavailable, ConfigError, PermissionDenied
from broker.dev.devstack import DevServer
from broker.vault.database import (
    DatabaseRole,
    DynamicCredential,
    configure_database,
    issue_credential,
    revoke_lease,
    revoke_prefix,
    rotate_root,
)
from tests.pgcluster import PgCluster

READONLY = DatabaseRole(grants=("SELECT ON TABLE public.orders",), default_ttl=300, max_ttl=600)


@pytest.fixture
def vault(openbao: DevServer) -> Iterator[hvac.Client]:
    client = hvac.Client(url=openbao.addr, token=openbao.root_token)
    yield client
    client.adapter.close()


@pytest.fixture(scope="module")
def dbname(postgres: PgCluster) -> Iterator[str]:
    """A database of this module's own, with one table the role may read and one it may not."""
    name = f"vaulttest_{secrets.token_hex(4)}"
    with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(postgres.superuser_dsn(name), autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, amount_usd numeric)")
        conn.execute("INSERT INTO orders VALUES (1, 120)")
        conn.execute("CREATE TABLE payroll (id int PRIMARY KEY, salary numeric)")
    yield name
    with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def mount(openbao: DevServer, postgres: PgCluster, dbname: str) -> Iterator[str]:
    """A database engine mount with a connection to ``dbname`` and a read-only role."""
    client = hvac.Client(url=openbao.addr, token=openbao.root_token)
    path = f"db-{secrets.token_hex(4)}"
    _configure(client, postgres, dbname, path)
    yield path
    client.sys.disable_secrets_engine(path)  # revokes whatever leases the tests left behind
    client.adapter.close()


def _configure(
    client: hvac.Client,
    postgres: PgCluster,
    dbname: str,
    mount: str,
    *,
    username: str | None = None,
    password: str | None = None,
    role: DatabaseRole = READONLY,
) -> list[tuple[str, str]]:
    return list(
        configure_database(
            client,
            mount=mount,
            connection_name="pg",
            host=postgres.host,
            port=postgres.port,
            username=username or postgres.superuser,
            password=password or postgres.password,
            dbname=dbname,
            sslmode="disable",
            roles={"readonly": role},
        )
    )


def _login(postgres: PgCluster, cred: DynamicCredential, dbname: str) -> psycopg.Connection:
    return psycopg.connect(postgres.dsn(cred.username, cred.password, dbname), autocommit=True)


def _can_login(postgres: PgCluster, cred: DynamicCredential, dbname: str) -> bool:
    try:
        with _login(postgres, cred, dbname):
            return True
    except psycopg.OperationalError:
        return False


@pytest.mark.integration
def test_configure_reports_created_then_present_then_updated(
    vault: hvac.Client, postgres: PgCluster, dbname: str
) -> None:
    """A second run changes nothing and says so; a changed role is reported as updated."""
    path = f"db-{secrets.token_hex(4)}"
    try:
        first = _configure(vault, postgres, dbname, path)
        second = _configure(vault, postgres, dbname, path)
        longer = DatabaseRole(grants=READONLY.grants, default_ttl=400, max_ttl=600)
        third = _configure(vault, postgres, dbname, path, role=longer)
    finally:
        vault.sys.disable_secrets_engine(path)
    assert [outcome for _, outcome in first] == ["created", "created", "created"]
    assert [outcome for _, outcome in second] == ["present", "present", "present"]
    assert third[2] == (f"role {path}/roles/readonly", "updated")
    assert [outcome for _, outcome in third[:2]] == ["present", "present"]


@pytest.mark.integration
def test_issued_login_reads_the_granted_table(
    vault: hvac.Client, postgres: PgCluster, dbname: str, mount: str
) -> None:
    """A minted login connects with its password and runs the SELECT its role grants."""
    cred = issue_credential(vault, mount=mount, role="readonly")
    assert cred.lease_id.startswith(f"{mount}/creds/readonly/")
    assert cred.lease_duration == READONLY.default_ttl
    with _login(postgres, cred, dbname) as conn:
        assert conn.execute("SELECT id, amount_usd FROM orders").fetchall() == [(1, 120)]
    revoke_lease(vault, cred.lease_id)


@pytest.mark.integration
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM payroll",
        "INSERT INTO orders VALUES (2, 5)",
        "DELETE FROM orders",
        "CREATE TABLE mine (id int)",
        "CREATE ROLE sneaky LOGIN",
    ],
)
def test_statement_outside_the_grant_is_refused(
    vault: hvac.Client, postgres: PgCluster, dbname: str, mount: str, statement: str
) -> None:
    """The login can do nothing its role does not grant."""
    cred = issue_credential(vault, mount=mount, role="readonly")
    with (
        _login(postgres, cred, dbname) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)
    revoke_lease(vault, cred.lease_id)


@pytest.mark.integration
def test_revoking_the_lease_ends_the_session_and_refuses_new_logins(
    vault: hvac.Client, postgres: PgCluster, dbname: str, mount: str
) -> None:
    """Revocation stops a credential in use: its open session dies and it cannot log in again."""
    cred = issue_credential(vault, mount=mount, role="readonly")
    with _login(postgres, cred, dbname) as session:
        session.execute("SELECT 1")
        revoke_lease(vault, cred.lease_id)
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT id FROM orders")
    assert not _can_login(postgres, cred, dbname)


@pytest.mark.integration
def test_revoke_prefix_revokes_every_login_of_a_role(
    vault: hvac.Client, postgres: PgCluster, dbname: str, mount: str
) -> None:
    """One prefix revocation ends every outstanding login minted for the role."""
    creds = [issue_credential(vault, mount=mount, role="readonly") for _ in range(2)]
    assert all(_can_login(postgres, cred, dbname) for cred in creds)
    revoke_prefix(vault, f"{mount}/creds/readonly/")
    assert not any(_can_login(postgres, cred, dbname) for cred in creds)


@pytest.mark.integration
def test_short_ttl_credential_stops_working_when_its_lease_ends(
    vault: hvac.Client, postgres: PgCluster, dbname: str, mount: str
) -> None:
    """A TTL shorter than the role's shortens the lease, and the login dies when it ends."""
    cred = issue_credential(vault, mount=mount, role="readonly", ttl_seconds=2)
    assert cred.lease_duration == 2
    assert _can_login(postgres, cred, dbname)
    deadline = time.monotonic() + 10
    while _can_login(postgres, cred, dbname) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _can_login(postgres, cred, dbname)


@pytest.mark.integration
def test_longer_ttl_than_the_role_allows_gets_the_role_ttl(vault: hvac.Client, mount: str) -> None:
    """The role's TTL is a ceiling a request cannot raise."""
    cred = issue_credential(vault, mount=mount, role="readonly", ttl_seconds=10_000)
    assert cred.lease_duration == READONLY.default_ttl
    revoke_lease(vault, cred.lease_id)


@pytest.mark.integration
def test_rotate_root_locks_out_the_old_password_and_issuing_still_works(
    vault: hvac.Client, postgres: PgCluster, dbname: str
) -> None:
    """After rotation only Vault knows the root password, and it keeps minting logins."""
    root, old_password = f"vault_root_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {root} SUPERUSER LOGIN PASSWORD '{old_password}'")
    path = f"db-{secrets.token_hex(4)}"
    try:
        _configure(vault, postgres, dbname, path, username=root, password=old_password)
        rotate_root(vault, mount=path, connection_name="pg")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(postgres.dsn(root, old_password, dbname)).close()
        again = _configure(vault, postgres, dbname, path, username=root, password=old_password)
        assert {outcome for _, outcome in again} == {"present"}
        cred = issue_credential(vault, mount=path, role="readonly")
        with _login(postgres, cred, dbname) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    finally:
        vault.sys.disable_secrets_engine(path)
        with psycopg.connect(postgres.superuser_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {root}")


@pytest.mark.integration
@pytest.mark.parametrize(
    "call",
    [
        lambda c: issue_credential(c, mount="database", role="readonly"),
        lambda c: revoke_lease(c, "database/creds/readonly/x"),
        lambda c: revoke_prefix(c, "database/creds/readonly/"),
        lambda c: rotate_root(c, connection_name="pg"),
        lambda c: configure_database(
            c, connection_name="pg", host="h", port=1, username="u", password="p", roles={}
        ),
    ],
    ids=["issue", "revoke", "revoke_prefix", "rotate_root", "configure"],
)
def test_unreachable_vault_raises_backend_unavailable_naming_the_address(
    call: Callable[[hvac.Client], object],
) -> None:
    """No Vault means BackendUnavailable that says where Vault was expected."""
    client = hvac.Client(url="http://127.0.0.1:1", token="unused")
    try:
        with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1\b"):
            call(client)
    finally:
        client.adapter.close()


def test_credential_repr_hides_the_password() -> None:
    """A credential can be logged without leaking its password."""
    cred = DynamicCredential("v-user", "s3cret-pw", "database/creds/r/abc", 60, True)
    assert "s3cret-pw" not in repr(cred)


@pytest.mark.parametrize(
    ("grants", "default_ttl", "max_ttl"),
    [
        (("SELECT ON TABLE orders; DROP TABLE orders",), 60, 60),
        (("",), 60, 60),
        (("SELECT ON TABLE orders",), 0, 60),
        (("SELECT ON TABLE orders",), 120, 60),
    ],
    ids=["smuggled-statement", "empty-grant", "zero-ttl", "default-over-max"],
)
def test_invalid_role_cannot_be_built(
    grants: tuple[str, ...], default_ttl: int, max_ttl: int
) -> None:
    """A role with a second statement hidden in a grant or inverted TTLs is refused."""
    with pytest.raises(ConfigError):
        DatabaseRole(grants=grants, default_ttl=default_ttl, max_ttl=max_ttl)


def test_empty_prefix_is_refused_before_reaching_vault() -> None:
    """An empty prefix would revoke every lease in Vault, so it is refused outright."""
    client = hvac.Client(url="http://127.0.0.1:1", token="unused")
    try:
        with pytest.raises(ConfigError):
            revoke_prefix(client, "/")
    finally:
        client.adapter.close()


@pytest.mark.integration
def test_a_lease_that_cannot_be_shortened_is_revoked_through_the_path_a_sidecar_may_use(
    vault: hvac.Client, mount: str
) -> None:
    """A token that may read the role's credentials and revoke their leases by path (as a
    sidecar's policy allows) but not renew them: shortening fails, the error says so, and
    the lease is gone (the body form of revoke, refused to it, used to leave it live)."""
    policy = (
        f'path "{mount}/creds/readonly" {{ capabilities = ["read"] }}\n'
        f'path "sys/leases/revoke/{mount}/creds/readonly/*" {{ capabilities = ["update"] }}\n'
    )
    name = f"no-renew-{secrets.token_hex(4)}"
    vault.sys.create_or_update_policy(name, policy)
    made = vault.auth.token.create(policies=[name], ttl="5m", no_default_policy=True)
    token = made["auth"]["client_token"]
    limited = hvac.Client(url=vault.url, token=token)
    before = _leases(vault, mount)
    try:
        with pytest.raises(PermissionDenied, match="shorten a database lease"):
            issue_credential(limited, mount=mount, role="readonly", ttl_seconds=2)
    finally:
        limited.adapter.close()
    assert _leases(vault, mount) == before


def _leases(vault: hvac.Client, mount: str) -> set[str]:
    try:
        found = vault.adapter.request("LIST", f"/v1/sys/leases/lookup/{mount}/creds/readonly/")
    except hvac.exceptions.InvalidPath:
        return set()
    return set((found or {}).get("data", {}).get("keys") or [])
