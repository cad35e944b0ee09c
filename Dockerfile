# The sidecar image: slim, non-root, one agent per container, next to the agent's container.
# Build: docker build -t agent-credential-broker .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY bench ./bench
RUN pip install . && useradd --system --uid 10001 --home-dir /nonexistent broker \
    && mkdir -p /run/broker /var/lib/broker && chown broker /run/broker /var/lib/broker

USER 10001
# The socket directory is shared with the agent's container (an emptyDir in Kubernetes);
# the manifest and the AppRole files are mounted read-only by the platform.
VOLUME ["/run/broker", "/var/lib/broker"]
# Readiness, not liveness: /readyz is 503 whenever the sidecar would refuse for a reason of
# its own (Vault down, audit trail unwritable, control state stale, no valid certificate), so
# a sidecar refusing everything shows as unhealthy. It recovers by itself: no restart needed.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["broker", "probe", "--listen", "unix:/run/broker/sidecar.sock", "--path", "/readyz"]
ENTRYPOINT ["broker", "sidecar", "--listen", "unix:/run/broker/sidecar.sock", \
            "--manifest", "/etc/broker/manifest.yaml", "--audit", "/var/lib/broker/audit.jsonl"]
