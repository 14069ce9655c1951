# OCI image of the lossless filter for Istio's WasmPlugin (url: oci://REGISTRY/lossless:VERSION),
# in Istio's Docker-image layout: a FROM-scratch image whose only layer holds /plugin.wasm
# (exactly one COPY, so exactly one layer).
#
#   make build
#   docker build -t REGISTRY/lossless:0.1.0 .
#   docker push REGISTRY/lossless:0.1.0
#
# The build context is the repository root; .dockerignore sends only target/lossless.wasm (and the
# demo backend's file for envoy/compose/backend.Dockerfile).
FROM scratch
LABEL org.opencontainers.image.title="lossless" \
      org.opencontainers.image.description="proxy-wasm filter for Envoy: lossless online/offline" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY target/lossless.wasm ./plugin.wasm
