# The API image: FastAPI + uvicorn, no torch and no scikit-learn (the `[api]` extra only).
#   docker build -f docker/api.Dockerfile -t lelastic-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LELASTIC_DATA_DIR=/data

WORKDIR /app
# Dependencies first, so that editing the source does not re-install them.
COPY pyproject.toml README.md ./
RUN mkdir -p service workers && touch service/__init__.py workers/__init__.py \
    && pip install '.[api]' && pip uninstall -y lelastic
COPY service ./service
COPY workers ./workers
RUN pip install --no-deps '.[api]' && mkdir -p /data

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["lelastic", "api", "--host", "0.0.0.0", "--port", "8000"]
