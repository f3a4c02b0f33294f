# One image for the Prefect server and the serving worker, so client and server versions match
# (Prefect 3.8's server needs fastapi<0.151, pinned in pyproject.toml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLBACKEND=Agg

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mnist_pipeline ./mnist_pipeline
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
RUN pip install . && useradd --create-home --uid 10001 app \
    && mkdir -p /data/prefect && chown app /data/prefect
USER app

# No credential is baked in: everything comes from the environment at run time.
CMD ["python", "deployments/serve.py"]
