# syntax=docker/dockerfile:1
# Container image of the gateway pod server and operator CLI (binary `gateway`).
#   docker build -t gateway:0.1.0 .
#   docker run --rm -p 8080:8080 gateway:0.1.0     # embedded single-node default
# Kubernetes manifests: deploy/ (see docs/deploy.md).

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: every member must be present for Cargo to resolve it,
# and the binary may embed files from the tree (the demo page's assets).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release -p gateway --locked \
 && install -D -m 0755 target/release/gateway /out/gateway

FROM debian:bookworm-slim AS runtime
# CA certificates for TLS to Redis/NATS and for fetching a JWKS URL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# The gateway's own defaults listen on 127.0.0.1, unreachable from outside a
# container: listen on all interfaces here. The admin port is meant for the
# cluster only; set GATEWAY_ADMIN_TOKEN wherever it can be reached.
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 \
    GATEWAY_AGENT_LISTEN=0.0.0.0:9091
# 8080 WebSocket + /healthz /readyz, 9090 admin (/metrics, /scaler, /admin/*),
# 9091 HAProxy agent-check.
EXPOSE 8080 9090 9091
# SIGTERM starts a drain; the process exits once its clients are gone.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
