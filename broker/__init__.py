"""Agent credential broker: a sidecar that mints short-lived, narrowly scoped credentials
for one AI agent through Vault/OpenBao, after checking the agent's scope manifest."""

__version__ = "0.1.0"
