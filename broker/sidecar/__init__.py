"""The running sidecar: HTTP server, service, minting, signing, gates, metrics."""
