# One image for every Downlink service: `docker run IMAGE gateway|downloader|processor|exporter|migrate`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /app downlink \
    && mkdir -p /data \
    && chown downlink /data

USER downlink
VOLUME ["/data"]
ENV DOWNLINK_STORAGE_URL=file:///data
EXPOSE 8000
ENTRYPOINT ["downlink"]
CMD ["--help"]
