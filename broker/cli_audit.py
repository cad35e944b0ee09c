"""Placeholder: this command group is being written; it registers nothing yet."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: argparse._SubParsersAction[Any], bench: argparse._SubParsersAction[Any]) -> None:
    del commands, bench
