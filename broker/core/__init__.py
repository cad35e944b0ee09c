"""The pure decision core: manifest models, constraints, decide, limits, reasons, claims.

Nothing here reads a clock, file, socket or Vault."""
