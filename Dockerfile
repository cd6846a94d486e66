# Multi-stage build: compile in the Rust image, run in a slim Debian with a
# non-root user. Mount your config at /etc/waygate/gateway.toml; inside a
# container set `admin_listen = "0.0.0.0:9901"` to reach the admin port.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin waygate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home waygate \
    && mkdir -p /etc/waygate /var/lib/waygate \
    && chown waygate /var/lib/waygate
COPY --from=build /src/target/release/waygate /usr/local/bin/waygate
COPY contrib/docker/gateway.toml /etc/waygate/gateway.toml
USER waygate
WORKDIR /var/lib/waygate
ENV WAYGATE_CONFIG=/etc/waygate/gateway.toml
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/waygate"]
CMD ["run", "--log-format", "json"]
