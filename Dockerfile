# syntax=docker/dockerfile:1
#
# crm-gateway container image.
#
#   docker build -t crm-gateway .
#   docker run --rm -p 8080:8080 --stop-timeout 40 \
#       -v /srv/crm-gateway:/etc/crm-gateway:ro \
#       crm-gateway
#
# Configuration: mount a folder at /etc/crm-gateway/ holding gateway.yaml and the
# policy files it lists (read-only is fine: the gateway only reads it, and reloads
# by itself when a file in it changes). Keep listen.port at 8080, the port this image
# exposes and health-checks. With several replicas set session.store: redis; with the
# cookie store give every replica the same CRMGW_SECRET_KEY. Writable state (a
# generated session key, the TOTP secrets file) belongs in /var/lib/crm-gateway/, owned
# by the image's user (uid 10001). See docs/deployment.md.
#
# Stopping: SIGTERM reaches the gateway directly (exec-form ENTRYPOINT, no shell), which
# drains for up to --drain-timeout (default 30 s) and exits 0. Docker's default stop
# timeout is 10 s: give it more (`docker stop -t 40`, compose `stop_grace_period`).

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: one wheel of this project, nothing else -----------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# Only what the wheel is made of (the rest of the context is ignored by .dockerignore too).
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
RUN python -m pip wheel --no-cache-dir --no-deps -w /dist .

# --- runtime: the wheel and its runtime dependencies, a non-root user -----------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="crm-gateway" \
      org.opencontainers.image.description="Location-aware access gateway in front of a legacy CRM" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The wheel is bind-mounted from the build stage, so it leaves no layer behind. Runtime
# dependencies only (no [test] extra); every one of them ships manylinux wheels, so the
# slim image needs no compiler.
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    python -m pip install --no-cache-dir /dist/*.whl \
 && crm-gateway --version

# uid/gid 10001: above any host's ordinary users, numeric so that Kubernetes'
# runAsNonRoot can verify it. /etc/crm-gateway stays root-owned (config is read-only to
# the gateway); /var/lib/crm-gateway is the one place it may write.
RUN groupadd --system --gid 10001 crmgw \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/crm-gateway \
            --no-create-home --shell /usr/sbin/nologin crmgw \
 && install -d -m 0755 -o root -g root /etc/crm-gateway \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/crm-gateway

USER 10001:10001
WORKDIR /var/lib/crm-gateway

EXPOSE 8080

# Liveness only (/_gateway/health): the process answers. Readiness (upstream and session
# store reachable, /_gateway/ready) is for load balancers, not for restarting a container.
# Python's urllib because the slim image has no curl; urlopen raises on any non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/_gateway/health', timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["crm-gateway"]
CMD ["serve", "-c", "/etc/crm-gateway/gateway.yaml"]
