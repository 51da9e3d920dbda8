# One image for the whole system: the workspace is compiled once and the image
# holds the three binaries and `orderflowctl`; each compose service picks its
# binary by `command` (docker build -t orderflow . && docker run orderflow producer),
# and an operator runs the tool beside them (docker-compose exec producer orderflowctl status).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p producer -p relay -p consumer -p ctl \
    && mkdir /out && cp target/release/producer target/release/relay target/release/consumer \
       target/release/orderflowctl /out/

FROM debian:bookworm-slim
# curl for the health checks (`curl -fsS http://127.0.0.1:PORT/readyz`).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/orderflow --create-home orderflow
COPY --from=build /out/ /usr/local/bin/
USER orderflow
WORKDIR /var/lib/orderflow
CMD ["producer"]
