FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md celeryconfig.py ./
COPY worker ./worker
COPY providers ./providers
COPY reconciliation ./reconciliation
COPY schemas ./schemas
RUN pip install --no-cache-dir . && useradd --system --uid 10001 payrecon \
    && mkdir -p /var/lib/payrecon/reports && chown payrecon /var/lib/payrecon/reports
USER payrecon
CMD ["payrecon", "--help"]
