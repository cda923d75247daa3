# syntax=docker/dockerfile:1
# Container image of the gateway pod server and operator CLI (binary `gateway`).
#   docker build -t gateway:0.1.0 .
#   docker run --rm -p 8080:8080 gateway:0.1.0
#       one node, embedded store and backplane; WebSockets on ws://localhost:8080/ws; the admin
#       port stays on the container's loopback (no token needed, not reachable from outside)
#   docker run --rm -p 8080:8080 -p 9090:9090 -v "$PWD/admin-token:/run/secrets/admin-token:ro" \
#       -e GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 -e GATEWAY_ADMIN_TOKEN_FILE=/run/secrets/admin-token \
#       gateway:0.1.0
#       the admin port published too, so it needs a token (the gateway refuses to start without)
# Kubernetes manifests: deploy/ (see docs/deploy.md). deploy/tests/test_rehearsal.py runs the
# binary with this file's ENV and the two commands above, and probes it.
#
# Base images pinned by digest (a tag moves; a digest is the image that was reviewed). To move
# to a newer base: `docker buildx imagetools inspect rust:1-bookworm` (and debian:bookworm-slim),
# review, replace the digest.
ARG RUST_IMAGE=rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e
ARG RUNTIME_IMAGE=debian:bookworm-slim@sha256:4b50eb66f977b4062683ff434ef18ac191da862dbe966961bc11990cf5791a8d

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The whole workspace: every member must be present for Cargo to resolve it, and the binary
# embeds files from the tree (the demo and fleet pages' assets).
COPY . .
# Symbols stripped: the image carries no debug info (panics still name the location).
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
# .git is not in the build context: pass the commit for gateway_build_info, e.g.
# `docker build --build-arg GATEWAY_BUILD_COMMIT=$(git rev-parse --short HEAD) .`
ARG GATEWAY_BUILD_COMMIT=unknown
ENV GATEWAY_BUILD_COMMIT=${GATEWAY_BUILD_COMMIT}
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release -p gateway --bin gateway --locked \
 && install -D -m 0755 target/release/gateway /out/gateway

FROM ${RUNTIME_IMAGE} AS runtime
# CA certificates for TLS to Redis/NATS and for fetching a JWKS URL. The shell and coreutils of
# the slim image stay: the HAProxy pods' init container copies this binary with `cp`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin gateway
COPY --from=build /out/gateway /usr/local/bin/gateway
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# The gateway's own defaults listen on 127.0.0.1, unreachable from outside a container: the
# public and agent ports listen on all interfaces here. The admin port stays on loopback unless
# you publish it, with a token (see the second command above; deploy/ sets both tokens).
ENV GATEWAY_LISTEN=0.0.0.0:8080 \
    GATEWAY_ADMIN_LISTEN=127.0.0.1:9090 \
    GATEWAY_AGENT_LISTEN=0.0.0.0:9091
# 8080 WebSocket + /healthz /readyz, 8081 PROXY v2 listener (set GATEWAY_PROXY_LISTEN), 9090
# admin (/metrics, /scaler, /admin/*), 9091 HAProxy agent-check.
EXPOSE 8080 8081 9090 9091
# SIGTERM starts a drain; the process exits once its clients are gone.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
