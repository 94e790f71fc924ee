# syntax=docker/dockerfile:1

# Build stage: pinned dependencies in a layer of their own (rebuilt only when the lock
# changes), then the project itself, into a virtualenv that the runtime stage copies.
# Python 3.11.15 (March 2026), the newest 3.11 security release: 3.11.8 and later also fix
# the ast thread-safety race (gh-106905) that NumPy's own .npy header parsing hit.
FROM python:3.11.15-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY convengine ./convengine
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

# Runtime stage: the virtualenv and the service's source, run by an unprivileged user.
FROM python:3.11.15-slim-bookworm
RUN groupadd --system --gid 10001 convengine \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin convengine
COPY --from=build /opt/venv /opt/venv
# The service runs from its source, as from a checkout: the wheel holds the engine and the
# client only, so that `python -m app` never means an installed package.
COPY app /opt/convengine/app
# BLAS threads per worker are sized at start from the CPUs the container may use
# (app/__main__.py); set OPENBLAS_NUM_THREADS to override.
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONPATH=/opt/convengine \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVENGINE_HOST=0.0.0.0 \
    CONVENGINE_PORT=8000 \
    CONVENGINE_GRPC_PORT=8001 \
    CONVENGINE_WORKERS=1
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /tmp
# HTTP (REST and the inference protocol), and the inference protocol over gRPC.
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
CMD ["python", "-m", "app"]
