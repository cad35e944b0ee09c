"""The tool calls of one agent request, so each decision record lists every call so far.

An agent that passes the same ``request_id`` (and ``workflow``) on each tool call of one
task gets records like the design's example: the record of the second call carries both
calls, in order. Memory is bounded: the least recently used requests are forgotten first
(a forgotten request starts a fresh list), and the lists do not survive a restart; the
audit trail itself keeps every record, so ``broker audit trace`` still shows all calls."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MAX_REQUESTS = 10_000
MAX_CALLS = 64  # per request: a runaway loop must not grow one record without bound


class ToolCallLog:
    def __init__(self, max_requests: int = MAX_REQUESTS, max_calls: int = MAX_CALLS) -> None:
        self._calls: OrderedDict[tuple[str | None, str], list[dict[str, Any]]] = OrderedDict()
        self._max_requests, self._max_calls = max_requests, max_calls

    def add(
        self, workflow: str | None, request_id: str, call: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Append ``call`` to its request; returns a copy of the request's calls so far."""
        key = (workflow, request_id)
        calls = self._calls.pop(key, [])
        calls = [*calls, call][-self._max_calls :]
        self._calls[key] = calls
        while len(self._calls) > self._max_requests:
            self._calls.popitem(last=False)
        return [dict(c) for c in calls]
