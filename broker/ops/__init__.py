"""Runbook operations: control state (revoke, kill, rotate) and operator identity."""
