# The sidecar image: slim, non-root, one agent per container, next to the agent's container.
# Build: docker build -t agent-credential-broker .
# Multi-stage: wheels are built in the first stage, the runtime stage installs only them (no
# compiler, no pip cache). The runtime set is `pip install .`: neither the `bao` binary nor the
# PostgreSQL driver (the `dev` extra, for `broker up` only) is in the image.
# The base is pinned to an exact release; pin it by digest as well where you build
# (`docker buildx imagetools inspect python:3.11.11-slim-bookworm`), offline we could not.
ARG BASE=python:3.11.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip wheel --wheel-dir /wheels .

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels agent-credential-broker && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /nonexistent broker \
    && mkdir -p /run/broker /var/lib/broker && chown broker /run/broker /var/lib/broker

USER 10001
# The socket directory is shared with the agent's container (an emptyDir in Kubernetes, the
# pod's fsGroup owning it); the manifest comes from Vault or a read-only mount.
VOLUME ["/run/broker", "/var/lib/broker"]
# 9102: the metrics/probe listener (--metrics-listen), never the credential API.
EXPOSE 9102
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["broker", "probe", "--listen", "unix:/run/broker/sidecar.sock", "--path", "/readyz"]
ENTRYPOINT ["broker", "sidecar", "--listen", "unix:/run/broker/sidecar.sock", \
            "--audit", "/var/lib/broker/audit.jsonl"]
CMD ["--manifest", "/etc/broker/manifest.yaml"]
