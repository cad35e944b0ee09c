"""``broker bench control``: registered beside ``bench mint``, and its /readyz poller."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cli import build_parser
from broker.dev.controlbench import _seen_after, cmd_bench_control


def test_bench_control_is_registered_with_its_options() -> None:
    """`broker bench control` parses its options and runs the control bench."""
    args = build_parser().parse_args(["bench", "control", "--outstanding", "7", "--revokes", "3"])
    assert (args.outstanding, args.revokes, args.concurrency) == (7, 3, 32)
    assert args.func is cmd_bench_control


@pytest.fixture
def readyz(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A unix socket answering /readyz with the next of ``answers`` (the last one repeats)."""
    path = str(tmp_path / "s.sock")
    answers: list[dict[str, object]] = []
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                body = json.dumps(answers.pop(0) if len(answers) > 1 else answers[0]).encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, answers
    stop.set()
    thread.join()
    server.close()


def test_seen_after_waits_for_the_field_to_change(
    readyz: tuple[str, list[dict[str, object]]],
) -> None:
    """The poller keeps asking /readyz until the field satisfies the test, then returns."""
    path, answers = readyz
    answers += [{"agent_disabled": False}] * 3 + [{"agent_disabled": True}]
    seen = _seen_after(path, "agent_disabled", bool, time.perf_counter())
    assert not math.isnan(seen)
    assert answers == [{"agent_disabled": True}]  # every earlier answer was read first
