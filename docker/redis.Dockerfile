# Redis for docker-compose.yml where the public redis:7.4-alpine cannot be pulled (no registry reachable):
# Debian bookworm's redis-server on the local base image (scripts/build-base.sh). scripts/images.sh builds it
# as nextgpt/redis:bookworm only then, and compose picks it through NEXTGPT_REDIS_IMAGE.
ARG BASE_IMAGE=nextgpt/base:bookworm-py3.11
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN --mount=type=bind,source=docker/build,target=/build --mount=type=secret,id=ca \
    /build/build-env.sh sh -c 'apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null' \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && mkdir -p /data && chown redis:redis /data
COPY docker/redis-entrypoint.sh /usr/local/bin/redis-entrypoint
WORKDIR /data
# Debian creates the redis user with a system uid (not fixed): by name.
# hadolint ignore=DL3066
USER redis
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD ["redis-cli", "ping"]
ENTRYPOINT ["redis-entrypoint"]
CMD ["redis-server"]
