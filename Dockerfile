# recsys installed from its wheel. `docker compose up recsys` builds this image once and starts
# the nightly scheduler; nothing is downloaded when the container restarts.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md alembic.ini ./
COPY alembic ./alembic
COPY recsys ./recsys
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
COPY --from=build /dist /dist
RUN pip install --no-cache-dir /dist/*.whl && rm -rf /dist \
    && useradd --create-home --uid 1000 recsys \
    && mkdir -p /data /inbox && chown recsys:recsys /data /inbox
USER recsys
ENV RECSYS_HOME=/data
WORKDIR /data
CMD ["recsys", "--help"]
