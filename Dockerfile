# One image for all six services: `docker run driftloop service <name>`.
# Build stage: build the wheel and install it with its dependencies into /install.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY libs ./libs
COPY services ./services
RUN pip install --prefix=/install .

# Runtime stage: the installed package, the ML config and a non-root user.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DRIFTLOOP_CONFIG=/app/driftloop.yaml \
    DRIFTLOOP_HOME=/app/.driftloop \
    DRIFTLOOP_HOST=0.0.0.0
RUN useradd --create-home --uid 1000 driftloop
COPY --from=build /install /usr/local
WORKDIR /app
COPY driftloop.yaml /app/driftloop.yaml
RUN mkdir -p /app/.driftloop && chown -R driftloop:driftloop /app
USER driftloop
# ingestion, features, training, registry, deployment, monitoring (driftloop.settings.SERVICE_PORTS)
EXPOSE 8001 8002 8003 8004 8005 8006
ENTRYPOINT ["driftloop"]
CMD ["--help"]
