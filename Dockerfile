# syntax=docker/dockerfile:1
# rbee with NVML support: one image for the queen, hives and workers.
#   docker build -t rbee .
#   docker run --rm --gpus all --network host rbee hive --hive-id gpu-node-1 --nats-url nats://queen:4222
# The build step is docs/operations.md's ("Install as a service"): cgo on, so that
# the hive reads GPUs through NVML. NVML itself (libnvidia-ml.so) is not in
# the image: it is loaded at run time from the driver, which the NVIDIA
# Container Toolkit mounts into the container (--gpus all).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations" go build -trimpath -o /out/rbee ./cmd/rbee

# The same Debian release as the build stage: the cgo binary links its glibc.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/rbee --create-home rbee
COPY --from=build /out/rbee /usr/local/bin/rbee
USER rbee
WORKDIR /var/lib/rbee
VOLUME /var/lib/rbee
# What the NVIDIA Container Toolkit needs to mount the driver's NVML.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=utility
# 4222: the queen's embedded NATS broker; 8500: its HTTP API and /metrics.
EXPOSE 4222 8500
ENTRYPOINT ["/usr/local/bin/rbee"]
CMD ["help"]
