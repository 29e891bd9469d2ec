# deltaserve on an NVIDIA GPU (CUDA). The CPU image for laptops is Dockerfile.cpu.
# Build:  docker build -t deltaserve:cuda .
# Run:    docker run --gpus all -p 8000:8000 -v "$PWD/models:/models:ro" deltaserve:cuda \
#           --model /models/base --adapter-dir /models/adapters
# deploy/compose.yaml (+ compose.gpu.yaml) and deploy/k8s/ run it with Redis and Prometheus.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The distribution's python3 follows the base image's security updates; pinning its exact
# Debian revision would break the build at every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# A numeric uid, so that Kubernetes' runAsNonRoot can verify it; /var/lib/deltaserve is the
# adapter store's --data-dir (a volume).
RUN useradd --create-home --uid 10001 --user-group deltaserve \
    && install -d -o 10001 -g 10001 /var/lib/deltaserve
WORKDIR /opt/deltaserve
COPY pyproject.toml README.md ./
COPY deltaserve ./deltaserve
# On Linux x86_64, PyPI's torch==2.13.0 wheel is the CUDA build (see README, "GPU installs").
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .
ENV PATH=/opt/venv/bin:$PATH DELTASERVE_HOST=0.0.0.0 DELTASERVE_PORT=8000

USER 10001:10001
EXPOSE 8000
# Liveness only; readiness (model loaded, Redis reachable) is /ready, used by compose and k8s.
HEALTHCHECK --interval=15s --timeout=3s --start-period=180s \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["deltaserve", "serve"]
