# latentserve: CPU-only image with the shipped weights baked in.
#   docker build -t latentserve .
#   docker run --rm -p 127.0.0.1:8000:8000 latentserve

# --- build: a virtual environment with the runtime dependencies only ---
FROM python:3.11-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# dependencies first, code after: editing the code does not reinstall torch
COPY deploy/install.sh /src/deploy/install.sh
COPY requirements/runtime.lock /src/requirements/runtime.lock
COPY pyproject.toml README.md /src/
COPY models /src/models
COPY service /src/service
COPY latentserve /src/latentserve
RUN sh /src/deploy/install.sh /opt/venv /src

# --- runtime: the venv, the weights, a non-root user ---
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 latentserve \
 && useradd --system --uid 10001 --gid latentserve --no-create-home --shell /usr/sbin/nologin latentserve
COPY --from=build /opt/venv /opt/venv
COPY --chown=root:root weights /app/weights
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LATENTSERVE_HOST=0.0.0.0 \
    LATENTSERVE_PORT=8000 \
    LATENTSERVE_WEIGHTS_DIR=/app/weights
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2).status != 200)"]
CMD ["python", "-m", "service"]
