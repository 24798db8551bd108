#!/bin/sh
# As the official image's entrypoint: redis-server without a config file refuses other hosts (protected
# mode); inside a container network the other containers are the clients, so it is turned off.
set -e
if [ "${1:-}" = redis-server ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
