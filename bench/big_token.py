"""Verify time for an oversized action token (issue 13): a genuine agent key signs a token
whose payload is padded to ``--bytes``; the verifier's time to refuse (or accept) it is timed.

    .venv/bin/python bench/big_token.py --bytes 10485760 --rounds 3

Prints the median of the rounds and the verifier's verdict. The CA is in-process (the
verifier's cost does not depend on where the CA lives)."""

from __future__ import annotations

import argparse
import statistics
import time

from broker.core.errors import VerificationError
from broker.verify import Verifier
from tests.tokenfactory import AGENT, AUDIENCE, FakeCA, Identity, claims, forge


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    now = int(time.time())
    ca = FakeCA(clock=lambda: now)
    agent = Identity.certified(ca, AGENT, now - 60, now + 3600)
    padding = "x" * (args.bytes * 3 // 4)
    token = forge(agent.header(), claims(now, pad=padding), agent.sign)
    verifier = Verifier([ca.pem], clock=lambda: float(now))
    times, verdict = [], ""
    for _ in range(args.rounds):
        started = time.perf_counter()
        try:
            verifier.verify(token, audience=AUDIENCE)
            verdict = "accepted"
        except VerificationError as exc:
            verdict = f"refused: {exc.code}"
        times.append(time.perf_counter() - started)
    print(
        f"token {len(token)} bytes, {verdict}; verify median {statistics.median(times) * 1000:.3f} ms "
        f"over {args.rounds} rounds"
    )


if __name__ == "__main__":
    main()
