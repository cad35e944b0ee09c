"""Run a runbook's shell blocks as an operator would: in order, each under ``bash -euo
pipefail`` (``set -u``: an unset variable stops the runbook instead of widening a command), with the operator's environment, without blocking the event loop (the sidecars
under test run in it)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.harness import REPO

RUNBOOKS = REPO / "runbooks"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.DOTALL | re.MULTILINE)


def shell_blocks(name: str) -> list[str]:
    blocks = BLOCK.findall((RUNBOOKS / name).read_text())
    assert blocks, f"runbook {name} has no ```sh blocks"
    return blocks


def operator_env(vault_addr: str, token: str, audit: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(VAULT_ADDR=vault_addr, VAULT_TOKEN=token, BROKER_OPERATOR_AUDIT=str(audit))
    env.update(variables)
    return env


STRICT = ("-euo", "pipefail")  # as CI runs every drill: an unset variable stops the block


async def run_runbook(
    name: str, env: dict[str, str], timeout: float = 60.0, flags: tuple[str, ...] = STRICT
) -> str:
    """All blocks of one runbook; fails the test with the output of the block that failed."""
    output = []
    for block in shell_blocks(name):
        proc = await asyncio.create_subprocess_exec(
            "bash",
            *flags,
            "-c",
            block,
            env=env,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        text = out.decode()
        assert proc.returncode == 0, f"{name}: block failed ({proc.returncode}):\n{block}\n{text}"
        output.append(text)
    return "\n".join(output)
