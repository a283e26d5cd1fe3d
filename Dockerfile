# syntax=docker/dockerfile:1
#
# sqs-scheduler container image.
#
#   docker build -t sqs-scheduler:local .
#   docker run --rm sqs-scheduler:local config
#
# One image serves every role: the command picks it (`run --role worker`,
# `migrate`, `load ...`). See docker-compose.yml for a full local stack.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

############################ builder ############################
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /build

# 1. Dependencies only, against dummy sources, so this (slow) layer is
#    rebuilt only when Cargo.toml or Cargo.lock change.
#    rust-toolchain.toml is deliberately kept out of the build context
#    (.dockerignore): the base image already carries the 1.95 toolchain, and
#    the exact pin would make rustup try to download another patch release.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin sqs-scheduler \
 && rm -rf src

# 2. The real sources (migrations included: they are embedded at compile
#    time). Touch the crate roots so cargo sees them as newer than the
#    dummy build, whatever mtimes COPY leaves on the files.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin sqs-scheduler \
 && install -D -m 0755 target/release/sqs-scheduler /out/sqs-scheduler

############################ runtime ############################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# ca-certificates is left unpinned on purpose: it should track Debian's updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 scheduler \
 && useradd --system --uid 10001 --gid scheduler --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin scheduler

COPY --from=builder /out/sqs-scheduler /usr/local/bin/sqs-scheduler

WORKDIR /app
# In a container the HTTP server (/rpc, /metrics, /healthz, /readyz) must
# listen on all interfaces; the binary's own default is 127.0.0.1:8080.
ENV SCHEDULER_HTTP__BIND=0.0.0.0:8080 \
    SCHEDULER_LOG__FORMAT=logfmt

USER 10001:10001
EXPOSE 8080

# No curl in a slim image: bash's /dev/tcp speaks just enough HTTP/1.0 to
# ask /healthz on the port taken from SCHEDULER_HTTP__BIND. (One-shot
# commands such as `migrate` serve no HTTP; compose disables the check there.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["/bin/bash", "-c", "port=\"${SCHEDULER_HTTP__BIND##*:}\"; exec 3<>\"/dev/tcp/127.0.0.1/${port:-8080}\" && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && IFS= read -r -t 2 status <&3 && [[ \"$status\" == *' 200 '* ]]"]

ENTRYPOINT ["sqs-scheduler"]
CMD ["run"]
