# One image per service: docker build --build-arg SERVICE=producer|relay|consumer .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
ARG SERVICE
RUN cargo build --release -p ${SERVICE} && cp target/release/${SERVICE} /service

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /service /usr/local/bin/service
ENTRYPOINT ["/usr/local/bin/service"]
