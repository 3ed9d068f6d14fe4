# The shopstream engine image; docker-compose.yml runs it next to Kafka and Redis.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package needs: the build context also holds local data (.shopstream/).
COPY pyproject.toml README.md ./
COPY shopstream ./shopstream
COPY flows ./flows
COPY operators ./operators
COPY state ./state
COPY simulators ./simulators
RUN pip install .

# An unprivileged user whose working directory, /data, holds the recovery store and anything
# else written relative to it; docker-compose.yml mounts a volume there.
RUN useradd --create-home --uid 1000 shopstream \
    && mkdir -p /data \
    && chown shopstream /data
USER shopstream
WORKDIR /data
ENV SHOPSTREAM_RECOVERY_DIR=/data/recovery

CMD ["shopstream", "run"]
