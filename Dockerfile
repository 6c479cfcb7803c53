# omcp_py, the MCP server, as an image. It speaks MCP on stdin/stdout, so run it with -i,
# and give it the engine that runs the sandboxes: the host's socket (which gives the
# container control of the host's engine: see docs/deployment.md) or DOCKER_HOST.
#
#   docker build -t omcp_py .
#   docker run -i --rm -v /var/run/docker.sock:/var/run/docker.sock \
#       --group-add "$(stat -c %g /var/run/docker.sock)" omcp_py
#
# Build arguments:
#   BASE_IMAGE     the Python image to build on (default python:3.11-slim)
#   EXTRA_CA_CERT  a CA certificate file in the build context, trusted while the
#                  dependencies download (TLS-intercepting proxies); not kept
# Works with the classic builder (no BuildKit needed).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG EXTRA_CA_CERT=
COPY Dockerfile ${EXTRA_CA_CERT} /tmp/build-ca/
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_CACHE_DIR=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
# The dependencies first, in a layer of their own: a change of our code rebuilds
# only the last layer.
RUN set -eu; \
    if [ -n "${EXTRA_CA_CERT}" ]; then \
        cat "$(python3 -c 'from pip._vendor import certifi; print(certifi.where())')" \
            "/tmp/build-ca/$(basename "${EXTRA_CA_CERT}")" > /tmp/build-ca/bundle.pem; \
        export PIP_CERT=/tmp/build-ca/bundle.pem SSL_CERT_FILE=/tmp/build-ca/bundle.pem; \
    fi; \
    python3 -m pip install "uv>=0.5,<1"; \
    uv sync --locked --no-dev --no-install-project
COPY src ./src
# Our package itself (its build backend is downloaded too, through the same CA).
RUN set -eu; \
    if [ -f /tmp/build-ca/bundle.pem ]; then export SSL_CERT_FILE=/tmp/build-ca/bundle.pem; fi; \
    uv sync --locked --no-dev --no-editable

FROM ${BASE_IMAGE}
# The virtual environment only: no uv, no build tools, no CA of the build.
COPY --from=build /app/.venv /app/.venv
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin omcp
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1
# Not root; to use the host's socket it needs the socket's group (--group-add).
USER 10001:10001
WORKDIR /app
ENTRYPOINT ["omcp_py"]
