"""``broker probe``: the health-check command answers without the heavy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from broker.cli import main
from broker.sidecar.probe import parse_listen

CHECK = """
import sys
from broker.cli import main
code = main(["probe", "--listen", "127.0.0.1:9"])
print(code, sorted(m for m in ("hvac", "aiohttp", "pydantic") if m in sys.modules))
"""


def test_probe_imports_neither_hvac_nor_aiohttp_nor_pydantic() -> None:
    """A health check every 10 s pays for one GET, not for the whole command line."""
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "1 []"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("unix:/run/x.sock", ("unix", "/run/x.sock")),
        ("127.0.0.1:8080", ("tcp", 8080)),
        ("9", ("tcp", 9)),
    ],
)
def test_listen_addresses_parse(listen: str, expected: tuple[str, str | int]) -> None:
    """unix:PATH and loopback ports are what a probe may name."""
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["0.0.0.0:9", "127.0.0.1:x", "127.0.0.1:70000"])
def test_a_bad_listen_address_is_refused_with_exit_2(
    listen: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not loopback, not a port: a usage error naming --listen, never a probe of elsewhere."""
    assert main(["probe", "--listen", listen]) == 2
    assert "--listen" in capsys.readouterr().err
