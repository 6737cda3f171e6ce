# syntax=docker/dockerfile:1
# Multi-stage build: a Rust toolchain builds a release binary; the runtime
# image is Debian slim with CA certificates and an unprivileged user.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && strip target/release/authgate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin authgate
COPY --from=build /src/target/release/authgate /usr/local/bin/authgate
USER 10001:10001
WORKDIR /etc/authgate
ENV AUTHGATE_CONFIG=/etc/authgate/gateway.toml
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/authgate"]
CMD ["serve"]
