# syntax=docker/dockerfile:1
# Every sluiceway image: MEMBER names the workspace member (admin, fetcher, writer, operator,
# sample-api) and the image holds sluiceway-MEMBER, the shared library and their dependencies,
# nothing else. Build from the repository root (`make images` builds them all):
#   docker build --build-arg MEMBER=fetcher -t sluiceway-fetcher .
# The bases are build arguments so that a build can point at local or mirrored copies
# (`make images-local` builds these images with podman on bases made here).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.8

FROM ${UV_IMAGE} AS uv

# What uv reads to resolve the lock, in place: every pyproject and the lock. This stage's
# output changes only when one of them does, so the dependency layer below is rebuilt only then.
FROM ${PYTHON_IMAGE} AS manifests
COPY . /src
RUN find /src -type f ! -name pyproject.toml ! -name uv.lock -delete \
    && find /src -depth -type d -empty -delete

FROM ${PYTHON_IMAGE} AS build
ARG MEMBER
# `true` where PyPI is reached through a TLS-inspecting proxy whose authority the base image
# trusts (`make images-local` puts the host's CA bundle in its base): uv then reads the
# system's certificates. Only the RUN lines see it; the image does not keep it.
ARG UV_SYSTEM_CERTS=false
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/venv
WORKDIR /src
COPY --from=manifests /src ./
# The dependency layer: this member's share of the lock, without the workspace's own code.
RUN uv sync --frozen --no-dev --no-editable --package "sluiceway-${MEMBER:?build with --build-arg MEMBER=admin|fetcher|writer|operator|sample-api}" --no-install-workspace
# Then the code: the shared library and this member, installed as wheels (no source tree).
COPY . ./
RUN uv sync --frozen --no-dev --no-editable --package "sluiceway-${MEMBER}"

FROM ${PYTHON_IMAGE}
COPY --from=build /app/venv /app/venv
# `sluiceway migrate` (writer image) runs these: the schema a writer checks at start-up is
# the one its own image carries. A few kilobytes, so every image has them.
COPY migrations /app/migrations
# Nothing is written at run time: the root filesystem can be read-only.
ENV PATH=/app/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SLUICEWAY_MIGRATIONS_DIR=/app/migrations
USER 10001:10001
# Give the subcommand: `docker run IMAGE fetcher`; alone, the image lists the ones it has.
ENTRYPOINT ["sluiceway"]
CMD ["--help"]
