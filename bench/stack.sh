# Sourced by bench/chaos.sh and bench/soak.sh: the private stack both run
# on loopback (a Redis with AOF, a PostgreSQL cluster, the upstream,
# authgate), every process started here remembered by PID and stopped at
# exit. Nothing shared is touched: not the Redis on 6379, not the
# PostgreSQL on 5432.

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
SECRET=chaos-secret-that-is-long-enough-0123456789abcdef
export AUTHGATE_JWT_SECRET=$SECRET
CLIENT_CPU=${CHAOS_CLIENT_CPU:-1}
USERS=20

log() { printf '[%s %s] %s\n' "$NAME" "$(date +%T)" "$*" >&2; }

need_tools() {
  local need=()
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v redis-cli >/dev/null || need+=(redis-tools)
  command -v curl >/dev/null || need+=(curl)
  command -v taskset >/dev/null || need+=(util-linux)
  [[ -n "$PG_BIN" && -x "$PG_BIN/initdb" ]] || need+=(postgresql)
  need+=("$@")
  local missing=()
  for p in "${need[@]}"; do
    case $p in nginx) command -v nginx >/dev/null || missing+=(nginx) ;; *) missing+=("$p") ;; esac
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
}

# CHAOS_PROFILE=debug: a quicker build, for trying the scripts out.
build() {
  local profile=${CHAOS_PROFILE:-release} flag=--release
  [[ $profile == debug ]] && flag=
  log "building authgate and the load driver ($profile)"
  (cd "$ROOT" && nice -n 19 cargo build $flag --quiet --bin authgate --example bench-chaos-load)
  AUTHGATE=$ROOT/target/$profile/authgate
  LOAD=$ROOT/target/$profile/examples/bench-chaos-load
}

WORK=$(mktemp -d "/tmp/authgate-$NAME.XXXXXX")
chmod 755 "$WORK"
declare -A PID=()
cleanup() {
  local name
  for name in "${!PID[@]}"; do
    kill -CONT "${PID[$name]}" 2>/dev/null || true
    kill "${PID[$name]}" 2>/dev/null || true
  done
  pg_stop || true
  wait 2>/dev/null || true
  if [[ "${CHAOS_KEEP:-}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
  local _
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  log "nothing listens on port $1"
  return 1
}

# ------------------------------------------------------------ Redis
P_REDIS=$(free_port)
REDIS_URL=redis://127.0.0.1:$P_REDIS/0
redis_start() {
  mkdir -p "$WORK/redis"
  redis-server --port "$P_REDIS" --bind 127.0.0.1 --dir "$WORK/redis" --save "" \
    --appendonly yes --appendfsync everysec --daemonize no \
    --logfile "$WORK/redis/redis.log" &
  PID[redis]=$!
  local _
  for _ in $(seq 200); do
    [[ $(redis-cli -p "$P_REDIS" ping 2>/dev/null) == PONG ]] && return 0
    sleep 0.05
  done
  log "redis-server did not start"
  return 1
}
rcli() { redis-cli -p "$P_REDIS" "$@"; }

# ------------------------------------------------------------ PostgreSQL
P_PG=$(free_port)
PG_DATA=$WORK/pg/data
as_pg() { if ((EUID == 0)); then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_init() {
  mkdir -p "$WORK/pg"
  ((EUID == 0)) && chown postgres "$WORK/pg"
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" -A trust -U postgres >/dev/null
}
pg_start() {
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg/log" -w \
    -o "-p $P_PG -k $WORK/pg -c listen_addresses=127.0.0.1" start >/dev/null
}
pg_stop() {
  [[ -f "$PG_DATA/postmaster.pid" ]] || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
}
export CHAOS_DATABASE_URL=postgres://postgres@127.0.0.1:$P_PG/chaos

# ------------------------------------------------------------ upstream
P_UP=$(free_port)
upstream_start() {
  "$LOAD" upstream "127.0.0.1:$P_UP" &
  PID[upstream]=$!
  wait_port "$P_UP"
}

# ------------------------------------------------------------ authgate
# config PORT ADMIN_PORT: a gateway.toml on the private stack.
config() {
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
shutdown_grace = "10s"

[admin]
listen = "127.0.0.1:$2"

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:$P_UP"
auth = "required"

[jwt]
access_ttl = "3s"
refresh_ttl = "${CHAOS_REFRESH_TTL:-1h}"

[sessions]
backend = "redis"
redis_url = "$REDIS_URL"
key_prefix = "chaos:"
timeout = "$SESSION_TIMEOUT"

[users]
backend = "postgres"
url_env = "CHAOS_DATABASE_URL"
schema = "chaos"
bcrypt_cost = 4

[cookies]
secure = false

[auth.throttle]
# Every client is 127.0.0.1: an address limit would ban the whole load.
ip_max_failures = 0
EOF
}
SESSION_TIMEOUT=${CHAOS_SESSION_TIMEOUT:-2s}

# Users user0..19 (password pw-userI) and mallory0..9 (the wrong passwords).
seed_users() {
  as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$P_PG" -U postgres chaos
  config 1 2 >"$WORK/seed.toml"
  "$AUTHGATE" -c "$WORK/seed.toml" users migrate >/dev/null
  local i
  for i in $(seq 0 $((USERS - 1))) ; do
    echo "pw-user$i" | "$AUTHGATE" -c "$WORK/seed.toml" users add "user$i" --role user --password-stdin >/dev/null
  done
  for i in $(seq 0 9); do
    echo "pw-mallory$i" | "$AUTHGATE" -c "$WORK/seed.toml" users add "mallory$i" --password-stdin >/dev/null
  done
}

# authgate_start NAME PORT ADMIN_PORT
authgate_start() {
  config "$2" "$3" >"$WORK/$1.toml"
  RUST_LOG=warn "$AUTHGATE" -c "$WORK/$1.toml" 2>"$WORK/$1.log" &
  PID[$1]=$!
  local _
  for _ in $(seq 200); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$3/readyz") == 200 ]] && return 0
    sleep 0.05
  done
  log "$1 did not become ready"; cat "$WORK/$1.log" >&2
  return 1
}

panics() { cat "$WORK"/authgate*.log 2>/dev/null | grep -c 'panicked' || true; }
