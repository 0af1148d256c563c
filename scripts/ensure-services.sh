#!/usr/bin/env bash
# Make PostgreSQL, Redis and RabbitMQ answer on loopback for the tests (docs/architecture.md#components).
#
# Idempotent, one progress line per service:
#   answering             -> left alone
#   installed but stopped -> started with the project's start commands, then awaited
#   not installed         -> `apt-get update` (once) + install from Debian's packages, then started
# Exits non-zero, naming the service, when one cannot be made ready.
#
# Everything listens on 127.0.0.1 only (::1 too for Redis). MongoDB is not handled here:
# it has no Debian package, and the tests start SecantusDB (pip) themselves.
#
# PostgreSQL role: the tests connect as `postgres` with trust authentication over TCP,
#   postgresql://postgres@127.0.0.1:5432/postgres   (override: SHIFTFLOW_TEST_PG_ADMIN_URL)
# `postgres` is the superuser every Debian install has (`root` also works on the project's
# machines but does not exist on a fresh install). When `postgres` is refused, this script
# puts `host all all 127.0.0.1/32 trust` (and ::1) at the top of pg_hba.conf and reloads.
#
# RabbitMQ: the tests create a vhost per test. Through the management API that takes ~30 ms,
# through rabbitmqctl ~1.2 s (plus ~0.9 s to delete), so this script also enables the
# management plugin, bound to 127.0.0.1:15672. The tests fall back to rabbitmqctl without it.
#
# Environment: SHIFTFLOW_SERVICES_TIMEOUT (seconds to wait for each service, default 60;
# RabbitMQ gets 1.5x for its first boot).
set -euo pipefail

TIMEOUT=${SHIFTFLOW_SERVICES_TIMEOUT:-60}
HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379
AMQP_PORT=5672
MGMT_PORT=15672

log() { printf 'ensure-services: %s\n' "$*"; }
die() { printf 'ensure-services: ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); fi
fi
as_root() { "${SUDO[@]}" "$@"; }

tcp_open() { timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# wait_for SECONDS COMMAND...: run COMMAND every half second until it succeeds.
wait_for() {
  local seconds=$1; shift
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------- apt

APT_UPDATED=0
POLICY=/usr/sbin/policy-rc.d
POLICY_MADE=0
cleanup() { if [ "$POLICY_MADE" -eq 1 ]; then as_root rm -f "$POLICY"; fi; }
trap cleanup EXIT

# apt_install SERVICE PACKAGE...: install from Debian's packages, without letting their
# init scripts start the daemons (they would start with the packages' default listeners;
# this script starts them below, on loopback).
apt_install() {
  local service=$1; shift
  command -v apt-get >/dev/null 2>&1 || die "$service is not installed and apt-get is not available: install $* by hand"
  if [ "$(id -u)" -ne 0 ] && [ ${#SUDO[@]} -eq 0 ]; then
    die "$service is not installed; installing $* needs root (run this script as root or with sudo)"
  fi
  local apt_log
  apt_log=$(mktemp /tmp/ensure-services-apt.XXXXXX)
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update (once)"
    as_root apt-get update -qq >"$apt_log" 2>&1 || { tail -n 30 "$apt_log" >&2; die "$service: apt-get update failed"; }
    APT_UPDATED=1
  fi
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# ensure-services.sh: no daemon starts during apt-get install\nexit 101\n' | as_root tee "$POLICY" >/dev/null
    as_root chmod 755 "$POLICY"
    POLICY_MADE=1
  fi
  log "$service: installing $* from Debian's packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold "$@" >"$apt_log" 2>&1 ||
    { tail -n 30 "$apt_log" >&2; die "$service: apt-get install $* failed (log: $apt_log)"; }
  rm -f "$apt_log"
  cleanup
  POLICY_MADE=0
}

# ---------------------------------------------------------------------------- PostgreSQL

pg_ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$HOST" -p "$PG_PORT" -t 3
  else
    tcp_open "$HOST" "$PG_PORT"
  fi
}

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

pg_role_ok() {
  PGCONNECT_TIMEOUT=5 psql -w -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1
}

ensure_postgres() {
  local how="answering"
  if ! pg_ready; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
      apt_install PostgreSQL postgresql
      how="installed and started"
    else
      how="started"
    fi
    local ver
    ver=$(pg_version)
    if [ -z "$ver" ]; then  # server packages present, but no cluster
      ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
      [ -n "$ver" ] || die "PostgreSQL: no server version under /usr/lib/postgresql"
      as_root pg_createcluster "$ver" main >/dev/null || die "PostgreSQL: pg_createcluster $ver main failed"
    fi
    if [ "$how" = "installed and started" ]; then
      printf "# ensure-services.sh: loopback only\nlisten_addresses = '%s'\nport = %s\n" "$HOST" "$PG_PORT" |
        as_root tee "/etc/postgresql/$ver/main/conf.d/80-shiftflow-loopback.conf" >/dev/null
    fi
    # Exit code 2 means "already running" (e.g. listening elsewhere): the wait below decides.
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    wait_for "$TIMEOUT" pg_ready || die "PostgreSQL: not answering on $HOST:$PG_PORT after ${TIMEOUT}s (pg_ctlcluster $ver main start; see /var/log/postgresql/)"
  fi
  command -v psql >/dev/null 2>&1 || apt_install PostgreSQL postgresql-client
  if ! pg_role_ok; then
    local ver hba
    ver=$(pg_version)
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    [ -n "$ver" ] && [ -f "$hba" ] || die "PostgreSQL: role postgres is refused on $HOST and no pg_hba.conf was found to fix it"
    log "PostgreSQL: role postgres refused on $HOST; adding trust for loopback at the top of $hba"
    { printf '# ensure-services.sh: the tests connect as postgres without a password, loopback only\n'
      printf 'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n'
      as_root cat "$hba"; } >"/tmp/pg_hba.$$"
    as_root cp "/tmp/pg_hba.$$" "$hba"
    rm -f "/tmp/pg_hba.$$"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
    wait_for 10 pg_role_ok || die "PostgreSQL: role postgres is still refused on $HOST:$PG_PORT with trust auth"
  fi
  log "PostgreSQL: $how on $HOST:$PG_PORT, role postgres (trust)"
}

# ---------------------------------------------------------------------------- Redis

redis_ready() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
  else
    tcp_open "$HOST" "$REDIS_PORT"
  fi
}

ensure_redis() {
  local how="answering"
  if ! redis_ready; then
    how="started"
    if ! command -v redis-server >/dev/null 2>&1; then
      apt_install Redis redis-server
      how="installed and started"
    fi
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null ||
      die "Redis: redis-server did not start (see /var/log/redis/ci.log)"
    wait_for "$TIMEOUT" redis_ready || die "Redis: not answering PING on $HOST:$REDIS_PORT after ${TIMEOUT}s (see /var/log/redis/ci.log)"
  fi
  log "Redis: $how on $HOST:$REDIS_PORT"
}

# ---------------------------------------------------------------------------- RabbitMQ

# The broker answers the AMQP 0-9-1 protocol header with a frame (type 1: Connection.Start).
amqp_ready() {
  timeout 5 bash -c "
    exec 3<>/dev/tcp/$HOST/$AMQP_PORT || exit 1
    printf 'AMQP\\x00\\x00\\x09\\x01' >&3
    [ \"\$(head -c 1 <&3 | od -An -tx1 | tr -d ' \\n')\" = 01 ]" 2>/dev/null
}

# Configuration of a broker this script installed: everything on loopback, as on the
# project's machines (node name, epmd and the distribution port included).
configure_new_rabbitmq() {
  as_root mkdir -p /etc/rabbitmq
  printf '%s\n' 'NODENAME=rabbit@localhost' "ERL_EPMD_ADDRESS=$HOST" \
    'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"' |
    as_root tee /etc/rabbitmq/rabbitmq-env.conf >/dev/null
  printf 'listeners.tcp.local = %s:%s\n' "$HOST" "$AMQP_PORT" | as_root tee /etc/rabbitmq/rabbitmq.conf >/dev/null
}

ensure_rabbitmq() {
  local how="answering"
  if ! amqp_ready; then
    how="started"
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
      apt_install RabbitMQ rabbitmq-server
      configure_new_rabbitmq
      how="installed and started"
    fi
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true  # fails when already starting; the wait decides
    local limit=$((TIMEOUT * 3 / 2))
    wait_for "$limit" amqp_ready || die "RabbitMQ: not answering AMQP on $HOST:$AMQP_PORT after ${limit}s (see /var/log/rabbitmq/)"
  fi
  log "RabbitMQ: $how on $HOST:$AMQP_PORT"
  ensure_rabbitmq_management
}

# The management API on 127.0.0.1 only. Enabling the plugin on a running node does not
# re-read rabbitmq.conf, and its default listener is 0.0.0.0, so the address is also set in
# the running node before the plugin starts (measured: without that it binds 0.0.0.0).
ensure_rabbitmq_management() {
  if tcp_open "$HOST" "$MGMT_PORT"; then
    log "RabbitMQ management API: answering on $HOST:$MGMT_PORT"
    return 0
  fi
  local conf=/etc/rabbitmq/rabbitmq.conf
  if ! command -v rabbitmq-plugins >/dev/null 2>&1 || [ ! -d /etc/rabbitmq ]; then
    log "RabbitMQ management API: not available; tests use rabbitmqctl for vhosts (slower)"
    return 0
  fi
  as_root rabbitmq-plugins -q enable --offline rabbitmq_management >/dev/null 2>&1 || true
  if ! as_root grep -qs '^management.tcp.ip' "$conf"; then
    printf '# ensure-services.sh: management API on loopback only\nmanagement.tcp.ip = %s\nmanagement.tcp.port = %s\n' \
      "$HOST" "$MGMT_PORT" | as_root tee -a "$conf" >/dev/null
  fi
  local erl="_ = application:load(rabbitmq_management),
    ok = application:set_env(rabbitmq_management, tcp_config, [{ip, \"$HOST\"}, {port, $MGMT_PORT}]),
    application:get_env(rabbitmq_management, tcp_config)."
  if as_root rabbitmqctl -q eval "$erl" 2>/dev/null | grep -q "$HOST" &&
     as_root rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1 &&
     wait_for 30 tcp_open "$HOST" "$MGMT_PORT"; then
    log "RabbitMQ management API: enabled on $HOST:$MGMT_PORT"
  else
    log "RabbitMQ management API: could not be enabled now (it starts with the next broker restart); tests use rabbitmqctl meanwhile"
  fi
}

# ---------------------------------------------------------------------------- PgBouncer

# Only the program: tests/integration/test_pgbouncer.py starts a PgBouncer of its own on
# its own port (the package's init script is kept from starting one, as above).
ensure_pgbouncer() {
  if command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; then
    return 0
  fi
  apt_install PgBouncer pgbouncer
}

# ---------------------------------------------------------------------------- main

ensure_postgres
ensure_redis
ensure_rabbitmq
ensure_pgbouncer
log "all services ready"
