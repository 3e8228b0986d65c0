# jobstream: one image with both binaries (`producer`, `consumer`), running as a non-root user.
#
#   docker build -t jobstream:local .                       # multi-stage: builds in a Rust image (default)
#   docker build -t jobstream:local --target prebuilt .     # copies binaries built on the host (target/release)
#
# The `prebuilt` stage comes first so that the legacy builder (DOCKER_BUILDKIT=0) stops there and needs no
# Rust image: the offline smoke test (scripts/docker-smoke) uses it with a locally made base image.
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BUILDER_IMAGE=rust:1-bookworm

FROM ${RUNTIME_IMAGE} AS base
RUN (command -v useradd >/dev/null || (apt-get update && apt-get install -y --no-install-recommends passwd)) \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin jobstream \
    && rm -rf /var/lib/apt/lists/*
ENV JOBSTREAM_LOG_FORMAT=json
EXPOSE 8080 9090
USER 10001:10001
ENTRYPOINT ["consumer"]

FROM base AS prebuilt
ARG PROFILE=release
COPY target/${PROFILE}/producer target/${PROFILE}/consumer /usr/local/bin/

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins && strip target/release/producer target/release/consumer

FROM base AS runtime
COPY --from=builder /src/target/release/producer /src/target/release/consumer /usr/local/bin/
