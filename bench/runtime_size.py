"""Installed size of a requirement set's dependency closure, from an environment that has it.

    .venv/bin/python bench/runtime_size.py                   # the sidecar's runtime set
    .venv/bin/python bench/runtime_size.py --extra dev       # plus `broker up`'s extras

Walks ``importlib.metadata`` from agent-credential-broker's requirements (markers evaluated,
extras followed) and sums the sizes of every installed file of every distribution reached."""

from __future__ import annotations

import argparse
from importlib import metadata

from packaging.requirements import Requirement

ROOT = "agent-credential-broker"


def closure(name: str, extras: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        dist_name, wanted = todo.pop()
        dist = metadata.distribution(dist_name)
        key = dist.metadata["Name"].lower()
        if key in seen and not wanted:
            continue
        seen.add(key)
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, set(req.extras)))
    return seen


def size(names: set[str]) -> int:
    total = 0
    for name in names:
        for f in metadata.distribution(name).files or []:
            path = f.locate()
            if path.is_file():
                total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", action="append", default=[])
    args = parser.parse_args()
    names = closure(ROOT, set(args.extra)) - {ROOT}
    print(f"{len(names)} distributions, {size(names) / 1e6:.1f} MB installed")
    for name in sorted(names, key=lambda n: -size({n}))[:5]:
        print(f"  {name}: {size({name}) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
