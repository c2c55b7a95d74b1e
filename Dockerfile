# syntax=docker/dockerfile:1
# rbee with NVML support: one image for the queen, hives and workers.
# Its default command is a queen reachable from other containers; see
# "Docker" in docs/operations.md for hives and workers.
#   docker build -t rbee .
#   docker network create rbee
#   docker run -d --name queen --network rbee -v rbee-data:/var/lib/rbee rbee
#   docker run -d --network rbee --gpus all --pid=host --no-healthcheck rbee hive --hive-id gpu-node-1 --nats-url nats://rbee:PASSWORD@queen:4222
# The build step is docs/operations.md's ("Install as a service"): cgo on, so that
# the hive reads GPUs through NVML. NVML itself (libnvidia-ml.so) is not in
# the image: it is loaded at run time from the driver, which the NVIDIA
# Container Toolkit mounts into the container (--gpus all).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations" go build -tags nvml -trimpath -o /out/rbee ./cmd/rbee

# The same Debian release as the build stage: the cgo binary links its glibc.
FROM debian:bookworm-slim
# CA certificates: TLS to a NATS server (--tls-ca aside) and to engines.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/rbee --create-home rbee
COPY --from=build /out/rbee /usr/local/bin/rbee
USER rbee
WORKDIR /var/lib/rbee
VOLUME /var/lib/rbee
# What the NVIDIA Container Toolkit needs to mount the driver's NVML.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=utility
# 4222: the queen's embedded NATS broker; 8500: its HTTP API and /metrics.
EXPOSE 4222 8500
# The queen's /healthz (NATS connected, JetStream answering, the queen ok).
# Hives and workers run with --no-healthcheck: they serve no HTTP.
HEALTHCHECK --interval=30s --timeout=10s --start-period=2m --retries=3 CMD ["/usr/local/bin/rbee", "check", "queen", "127.0.0.1:8500"]
ENTRYPOINT ["/usr/local/bin/rbee"]
# A queen reachable from other containers: beyond loopback its broker
# requires credentials (docs/security.md); its log names them.
CMD ["queen", "--listen", "0.0.0.0:4222", "--http", "0.0.0.0:8500", "--data", "/var/lib/rbee"]
