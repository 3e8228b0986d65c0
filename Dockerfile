# jobstream: one image with both binaries (`producer`, `consumer`), running as a non-root user.
#
#   docker build -t jobstream:local .                       # multi-stage: builds in a Rust image (default)
#   docker build -t jobstream:local --target prebuilt .     # copies binaries built on the host (target/release)
#
# The `prebuilt` stage comes first so that the legacy builder (DOCKER_BUILDKIT=0) stops there and needs no
# Rust image: the offline smoke test (scripts/docker-smoke) uses it with a locally made base image.
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BUILDER_IMAGE=rust:1-bookworm

# ca-certificates: the system's CA bundle (/etc/ssl/certs/ca-certificates.crt), which the binaries trust for
# `rediss://` to a managed Redis and for HTTPS/gRPC-TLS OTLP endpoints; bookworm-slim does not have it.
FROM ${RUNTIME_IMAGE} AS base
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates passwd \
    && rm -rf /var/lib/apt/lists/* \
    && test -s /etc/ssl/certs/ca-certificates.crt \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin jobstream
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
# The `production` profile (Cargo.toml): release with link-time optimisation, as bench/ measures it.
RUN cargo build --profile production --locked --bins && strip target/production/producer target/production/consumer

FROM base AS runtime
COPY --from=builder /src/target/production/producer /src/target/production/consumer /usr/local/bin/
