"""Start and stop a throwaway PostgreSQL cluster for development, tests and benchmarks.

The cluster lives in a fresh temporary directory, listens on 127.0.0.1 only on a free port,
keeps its unix socket inside that directory (never /var/run/postgresql) and accepts only
scram-sha-256 password logins. Durability is traded for speed (fsync off): the data is
disposable. ``initdb`` and ``pg_ctl`` refuse to run as root, so when we are root every
PostgreSQL process runs as the ``postgres`` OS user, which then owns the directory.

``stop_cluster`` stops the postmaster by its own process id and waits until it is gone, so
no ``postgres`` process outlives its cluster.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from broker.core.errors import BackendUnavailable, ConfigError

PG_BINDIR = Path("/usr/lib/postgresql/15/bin")
_OS_USER_WHEN_ROOT = "postgres"


@dataclass(frozen=True)
class PgCluster:
    """A running throwaway cluster. ``password`` belongs to ``superuser`` and is never shown."""

    host: str
    port: int
    superuser: str
    password: str = field(repr=False)
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)
    bindir: Path = PG_BINDIR

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.workdir / "socket"

    @property
    def pid(self) -> int:
        return self.process.pid

    def dsn(self, user: str, password: str, dbname: str = "postgres") -> str:
        """A libpq connection string; values are quoted so any password is safe to pass."""
        parts = {"host": self.host, "port": str(self.port), "user": user}
        parts |= {"password": password, "dbname": dbname, "connect_timeout": "5"}
        return " ".join(f"{key}={_libpq_quote(value)}" for key, value in parts.items())

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        return self.dsn(self.superuser, self.password, dbname)


def start_cluster(
    *,
    superuser: str = "postgres",
    password: str | None = None,
    bindir: Path = PG_BINDIR,
    timeout: float = 30.0,
) -> PgCluster:
    """initdb a fresh cluster in a temporary directory, start it, wait until it takes logins."""
    if not (bindir / "initdb").exists():
        raise ConfigError(f"PostgreSQL binaries were not found in {bindir}")
    password = password or secrets.token_urlsafe(24)
    workdir = Path(tempfile.mkdtemp(prefix="broker-pg-"))
    try:
        _prepare_workdir(workdir)
        _initdb(bindir, workdir, superuser, password)
        process, port = _start_postmaster(bindir, workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    cluster = PgCluster("127.0.0.1", port, superuser, password, workdir, process, bindir)
    try:
        _wait_until_ready(cluster, timeout)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: PgCluster, timeout: float = 15.0) -> None:
    """``pg_ctl stop -m fast``, then make sure the postmaster and its children are gone."""
    if cluster.process.poll() is None:
        subprocess.run(
            [
                str(cluster.bindir / "pg_ctl"),
                "stop",
                "-D",
                str(cluster.datadir),
                "-m",
                "fast",
                "-w",
            ],
            check=False,
            capture_output=True,
            timeout=timeout + 5,
            **_os_identity(),
        )
        try:
            cluster.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The postmaster leads its own session, so its backends share its process group.
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.process.wait()
    shutil.rmtree(cluster.workdir, ignore_errors=True)


def _prepare_workdir(workdir: Path) -> None:
    (workdir / "socket").mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam(_OS_USER_WHEN_ROOT)
        for path in (workdir, workdir / "socket"):
            os.chown(path, entry.pw_uid, entry.pw_gid)


class _Identity(TypedDict, total=False):
    user: str
    group: str
    extra_groups: list[str]


def _os_identity() -> _Identity:
    """Popen arguments that run a child as postgres (no root groups kept) when we are root."""
    if os.geteuid() != 0:
        return {}
    return {"user": _OS_USER_WHEN_ROOT, "group": _OS_USER_WHEN_ROOT, "extra_groups": []}


def _initdb(bindir: Path, workdir: Path, superuser: str, password: str) -> None:
    pwfile = workdir / "pwfile"
    pwfile.write_text(password + "\n")
    try:
        os.chmod(pwfile, 0o600)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_OS_USER_WHEN_ROOT)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(workdir / "data"),
                "-U",
                superuser,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=False,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=_child_env(workdir),
            cwd=workdir,
            **_os_identity(),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace")[-500:]
        raise BackendUnavailable(f"initdb failed with status {result.returncode}: {tail}")


def _start_postmaster(bindir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    log = open(workdir / "postgres.log", "ab")  # noqa: SIM115 - owned by the child process
    settings = {
        "port": str(port),
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(workdir / "socket"),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "password_encryption": "scram-sha-256",
    }
    argv = [str(bindir / "postgres"), "-D", str(workdir / "data")]
    for name, value in settings.items():
        argv += ["-c", f"{name}={value}"]
    try:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=_child_env(workdir),
            cwd=workdir,
            # Its own session: a Ctrl-C at the terminal reaches the test runner, whose teardown
            # then stops the cluster in order, instead of killing the postmaster mid-test.
            start_new_session=True,
            **_os_identity(),
        )
    finally:
        log.close()
    return process, port


def _wait_until_ready(cluster: PgCluster, timeout: float) -> None:
    """Wait for the postmaster.pid status line to say "ready" (what ``pg_ctl -w`` checks)."""
    deadline = time.monotonic() + timeout
    pidfile = cluster.datadir / "postmaster.pid"
    while time.monotonic() < deadline:
        if cluster.process.poll() is not None:
            log = (cluster.workdir / "postgres.log").read_text(errors="replace")[-500:]
            raise BackendUnavailable(
                f"PostgreSQL exited with status {cluster.process.returncode} while starting: {log}"
            )
        try:
            lines = pidfile.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return
        time.sleep(0.02)
    raise BackendUnavailable(
        f"PostgreSQL on port {cluster.port} was not ready within {timeout:.0f}s"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env(workdir: Path) -> dict[str, str]:
    # libpq variables from the caller's shell must not redirect or authenticate our binaries.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env |= {"HOME": str(workdir), "LC_ALL": "C"}
    return env


def _libpq_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
