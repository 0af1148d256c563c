# ShiftFlow's container image: one image for every process (`shiftflow ingress`,
# `shiftflow workers --pool NAME`, `shiftflow scheduler run`, `shiftflow migrate`...).
#
#   docker build -t shiftflow .                   # every pool but the browser/media one
#   docker build -t shiftflow-tools --target tools .   # adds Chromium and ffmpeg (browser pool)
#
# Python slim, installed into a virtualenv from this checkout (wheels only: no compiler in
# the image), run as an unprivileged user. deploy/compose.yaml and deploy/k8s/ use it.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/shiftflow/.venv/bin:$PATH
WORKDIR /opt/shiftflow
COPY pyproject.toml README.md ./
COPY shiftflow ./shiftflow
RUN python -m venv /opt/shiftflow/.venv \
    && /opt/shiftflow/.venv/bin/pip install --no-compile . \
    && rm -rf /opt/shiftflow/shiftflow /opt/shiftflow/build
# The pools file the workers read unless a mount or ConfigMap replaces it.
COPY deploy/pools.yaml /etc/shiftflow/pools.yaml
# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/shiftflow --create-home shiftflow
# In a container every listener must be reachable from outside it: the ingress for
# webhooks and probes, the metrics listeners for Prometheus and the pools' probes.
ENV SHIFTFLOW_MODE=production \
    SHIFTFLOW_INGRESS_HOST=0.0.0.0 \
    SHIFTFLOW_METRICS_HOST=0.0.0.0 \
    SHIFTFLOW_DATA_DIR=/var/lib/shiftflow
USER 10001:10001
WORKDIR /var/lib/shiftflow
# 8080: webhooks and the management API; 9191-9198: metrics, /healthz and /readyz of the
# pools (metrics_port in pools.yaml), 9192 the scheduler's, 9193 the ingress's metrics.
EXPOSE 8080 9191-9198
ENTRYPOINT ["shiftflow"]
CMD ["--help"]

# The browser and media tools run Debian's Chromium and ffmpeg (docs/tools.md), never a
# browser downloaded at run time.
FROM base AS tools
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium ffmpeg fonts-liberation \
    && rm -rf /var/lib/apt/lists/*
USER 10001:10001
