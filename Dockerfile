# deltaserve on a CUDA GPU (first cut; the deployment issue finishes compose/k8s around it).
# Build:  docker build -t deltaserve .
# Run:    docker run --gpus all -p 8000:8000 -v /models:/models deltaserve \
#           --model /models/base --adapter-dir /models/adapters
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 deltaserve
WORKDIR /opt/deltaserve
COPY pyproject.toml README.md ./
COPY deltaserve ./deltaserve
# On Linux x86_64, PyPI's torch==2.13.0 wheel is the CUDA build (see README, "GPU installs").
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install .
ENV PATH=/opt/venv/bin:$PATH DELTASERVE_HOST=0.0.0.0 DELTASERVE_PORT=8000

USER deltaserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s \
    CMD curl -fsS http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["deltaserve", "serve"]
