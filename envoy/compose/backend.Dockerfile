# Demo backend image for ../docker-compose.yaml: demo/backend.py (Python stdlib only) on a slim
# Python base. Build context: the repository root (the root .dockerignore sends only what is
# copied here and the wasm for the top-level Dockerfile).
#   docker build -f envoy/compose/backend.Dockerfile -t lossless-demo-backend:dev .
# The command line (port, registry, advertised address, sidecar) comes from the compose file.
FROM python:3.12-slim
COPY demo/backend.py /app/backend.py
USER 65534:65534
ENTRYPOINT ["python3", "-u", "/app/backend.py"]
