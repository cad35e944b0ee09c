"""The audit trail: record format, durable log, replay and reports."""
