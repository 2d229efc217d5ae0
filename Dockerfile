# One image for all six services: `docker run driftloop service <name>`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY libs ./libs
COPY services ./services
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 1000 driftloop
COPY --from=build /install /usr/local
WORKDIR /app
COPY driftloop.yaml /app/driftloop.yaml
RUN mkdir -p /app/.driftloop && chown -R driftloop /app
USER driftloop
ENV DRIFTLOOP_CONFIG=/app/driftloop.yaml \
    DRIFTLOOP_HOME=/app/.driftloop \
    DRIFTLOOP_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["driftloop"]
CMD ["--help"]
