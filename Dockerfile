# The campaignq application image: one image, every process type (see compose.yaml, Procfile).
# The embedded PostgreSQL of `campaignq demo` is never used here: DATABASE_URL is always set.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Sources the wheel is built from: the package and the SQL it force-includes (pyproject.toml).
COPY pyproject.toml README.md constraints.txt ./
COPY consumer ./consumer
COPY db ./db
# The locked versions (constraints.txt), as CI proved them.
RUN pip install -c constraints.txt . && rm -rf /src

# No root at run time; the consumer needs no file system beyond its own package.
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin campaignq
USER campaignq
WORKDIR /tmp

# SIGTERM drains in-flight messages (CAMPAIGNQ_DRAIN_TIMEOUT_S, default 30 s): give the
# orchestrator a longer stop timeout than that (compose.yaml: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["campaignq"]
CMD ["consume"]
