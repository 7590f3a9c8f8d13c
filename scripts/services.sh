#!/usr/bin/env bash
# Make PostgreSQL, RabbitMQ and Redis answer on loopback for `make run` and `make test`; given
# names (postgresql, redis, rabbitmq), only those (`make check` needs PostgreSQL alone).
#
# For each service: if it answers, use it; if it is installed but stopped, start it; if it is
# missing and we are root, install it with apt and start it; otherwise stop with one line
# saying what to install or which SLUICEWAY_*_URL to set. A service whose URL is set in the
# environment is the user's to run and is left alone. Then make sure PostgreSQL has the
# `sluiceway` role (password `sluiceway`, may create databases) and database, and that
# RabbitMQ's management plugin is on (the operator reads queue depths from it).
set -euo pipefail

RUN_DIR=${RUN_DIR:-$(pwd)/.run}
mkdir -p "$RUN_DIR"

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" = 0 ]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 2; i++)); do port_open "$1" && return 0; sleep 0.5; done
  return 1
}
# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

ensure_postgres() {
  if [ -n "${SLUICEWAY_DATABASE_URL:-}" ]; then say "PostgreSQL: using SLUICEWAY_DATABASE_URL"; return; fi
  if ! port_open 5432; then
    if ! command -v pg_ctlcluster >/dev/null; then
      apt_install postgresql ||
        die "PostgreSQL is not running on 127.0.0.1:5432: install it (apt-get install postgresql) or set SLUICEWAY_DATABASE_URL"
    fi
    is_root || die "PostgreSQL is installed but not running on 127.0.0.1:5432: start it (as root: pg_ctlcluster <version> main start) or set SLUICEWAY_DATABASE_URL"
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
      version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
      pg_createcluster "$version" main >/dev/null
    fi
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_port 5432 60 || die "PostgreSQL $version did not come up on 127.0.0.1:5432; see /var/log/postgresql/"
  fi
  say "PostgreSQL: up on 127.0.0.1:5432"
  ensure_database
}

ensure_database() {
  # The role and database sluiceway connects as. Admin access is tried over TCP as
  # `postgres` (trust set-ups), then over the socket as the postgres OS user (Debian's peer).
  local sql
  sql=$(cat <<'SQL'
DO $$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sluiceway') THEN
    CREATE ROLE sluiceway LOGIN PASSWORD 'sluiceway' CREATEDB;
  END IF;
END$$;
SELECT 'CREATE DATABASE sluiceway OWNER sluiceway'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'sluiceway')\gexec
SQL
)
  if PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 </dev/null; then
    psql -h 127.0.0.1 -U postgres -d postgres -qX -v ON_ERROR_STOP=1 >/dev/null <<<"$sql"
  elif is_root && command -v runuser >/dev/null && id postgres >/dev/null 2>&1; then
    (cd / && runuser -u postgres -- psql -d postgres -qX -v ON_ERROR_STOP=1 >/dev/null <<<"$sql")
  elif PGPASSWORD=sluiceway psql -h 127.0.0.1 -U sluiceway -d sluiceway -Atqc 'SELECT 1' >/dev/null 2>&1 </dev/null; then
    :
  else
    die "cannot create the sluiceway role and database: as a PostgreSQL superuser run CREATE ROLE sluiceway LOGIN PASSWORD 'sluiceway' CREATEDB; CREATE DATABASE sluiceway OWNER sluiceway; or set SLUICEWAY_DATABASE_URL"
  fi
  say "PostgreSQL: role and database sluiceway ready"
}

ensure_redis() {
  if [ -n "${SLUICEWAY_REDIS_URL:-}" ]; then say "Redis: using SLUICEWAY_REDIS_URL"; return; fi
  if ! port_open 6379; then
    if ! command -v redis-server >/dev/null; then
      apt_install redis-server ||
        die "Redis is not running on 127.0.0.1:6379: install it (apt-get install redis-server) or set SLUICEWAY_REDIS_URL"
    fi
    local dir=/var/lib/redis
    [ -w "$dir" ] || dir=$RUN_DIR
    say "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir "$dir" --logfile "$RUN_DIR/redis.log"
    wait_port 6379 30 || die "Redis did not come up on 127.0.0.1:6379; see $RUN_DIR/redis.log"
  fi
  say "Redis: up on 127.0.0.1:6379"
}

ensure_rabbitmq() {
  if [ -n "${SLUICEWAY_AMQP_URL:-}" ]; then say "RabbitMQ: using SLUICEWAY_AMQP_URL"; return; fi
  if ! port_open 5672; then
    if ! command -v rabbitmq-server >/dev/null; then
      apt_install rabbitmq-server ||
        die "RabbitMQ is not running on 127.0.0.1:5672: install it (apt-get install rabbitmq-server) or set SLUICEWAY_AMQP_URL"
    fi
    is_root || die "RabbitMQ is installed but not running on 127.0.0.1:5672: start it (as root: rabbitmq-server -detached) or set SLUICEWAY_AMQP_URL"
    say "starting RabbitMQ (takes a while)"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    # The node takes several seconds before rabbitmqctl can even reach it: poll.
    local i
    for ((i = 0; i < 60; i++)); do
      rabbitmqctl await_startup --timeout 5 >/dev/null 2>&1 && break
      sleep 2
    done
    wait_port 5672 30 || die "RabbitMQ did not come up on 127.0.0.1:5672; see /var/log/rabbitmq/"
  fi
  say "RabbitMQ: up on 127.0.0.1:5672"
  # The operator reads queue depths (ready and unacked) from the management API.
  if ! port_open 15672; then
    if is_root && command -v rabbitmq-plugins >/dev/null; then
      say "RabbitMQ: enabling the management plugin"
      rabbitmq-plugins enable rabbitmq_management >/dev/null
      wait_port 15672 60 || die "RabbitMQ's management API did not come up on 127.0.0.1:15672"
    else
      die "RabbitMQ's management API is not on 127.0.0.1:15672: enable it (as root: rabbitmq-plugins enable rabbitmq_management)"
    fi
  fi
  say "RabbitMQ: management API up on 127.0.0.1:15672"
}

[ $# -gt 0 ] || set -- postgresql redis rabbitmq
for service in "$@"; do
  case $service in
    postgresql) ensure_postgres ;;
    redis) ensure_redis ;;
    rabbitmq) ensure_rabbitmq ;;
    *) die "no service $service: expected postgresql, redis or rabbitmq" ;;
  esac
done
