#!/usr/bin/env bash
# authgate benchmark: authgate beside nginx (plain proxy), HAProxy 2.6
# (jwt_verify) and, in case 1, hyper's server in front of hyper's client
# with nothing else (bench/floor.rs) and a bare tokio + httparse forwarder
# (bench/floor_raw.rs), on loopback, proxy + upstream pinned to one core and the
# load generator to another. See docs/performance.md.
#
#   bench/run.sh                       # everything: 3 rounds of 10 s, ~12 min
#   BENCH_DURATION=2s BENCH_ROUNDS=1 BENCH_CASES="1 2" bench/run.sh   # smoke
#
# Environment: BENCH_CASES (default "1 2 3 4 5 6 7"), BENCH_ROUNDS (3),
# BENCH_DURATION (10s), BENCH_CONNECTIONS (50), BENCH_PROXY_CPU (0),
# BENCH_CLIENT_CPU (1), BENCH_IDLE (10000), BENCH_WORKERS (authgate
# [server] worker_threads, default unset: one per core it may run on),
# BENCH_OUT (bench/results/latest.md), BENCH_KEEP=1 keeps the work folder.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASES=" ${BENCH_CASES:-1 2 3 4 5 6 7} "
ROUNDS=${BENCH_ROUNDS:-3}
DUR=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNECTIONS:-50}
PCPU=${BENCH_PROXY_CPU:-0}
CCPU=${BENCH_CLIENT_CPU:-1}
IDLE_N=${BENCH_IDLE:-10000}
OUT=${BENCH_OUT:-$ROOT/bench/results/latest.md}
HELPER="python3 $ROOT/bench/helper.py"

P_UP=18001 P_NGINX=18010 P_NGINX64=18011 P_HAPROXY=18020
P_AG=18030 P_AG_LOGS=18031 P_AG_ES=18032 P_AG_ED=18033 P_AG_AS=18034 P_FLOOR=18040 P_RAW=18041 P_REDIS=16379

has() { [[ "$CASES" == *" $1 "* ]]; }
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# ------------------------------------------------------------ tools
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v redis-server >/dev/null || need+=(redis-server)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# 10,000 client sockets, plus the proxies' own (a container may cap the hard limit).
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

log "building authgate and the upstream (release)"
(cd "$ROOT" && cargo build --release --quiet &&
  cargo build --release --quiet --example bench-upstream --example bench-floor --example bench-floor-raw)
AUTHGATE=$ROOT/target/release/authgate
UPSTREAM=$ROOT/target/release/examples/bench-upstream
FLOOR=$ROOT/target/release/examples/bench-floor
FLOOR_RAW=$ROOT/target/release/examples/bench-floor-raw

WORK=$(mktemp -d /tmp/authgate-bench.XXXXXX)
mkdir -p "$WORK/raw" "$WORK/nginx/logs"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ "${BENCH_KEEP:-}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  log "nothing listens on port $1"; return 1
}

# Waits (at most 90 s) until a process has used under 2 % of a core for a
# second: abandoned bcrypt work must not spill into the next measurement.
wait_idle() {
  local pid=$1 before after
  for _ in $(seq 90); do
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    sleep 1
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    (( after - before < 2 )) && return 0
  done
  log "pid $pid still busy after 90 s"
}

start() { # name cmd...: runs pinned to the proxy core, remembers the pid
  local name=$1; shift
  taskset -c "$PCPU" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}

# ------------------------------------------------------------ configuration
export BENCH_JWT_SECRET=bench-secret-0123456789abcdef-0123456789
SECRET=$BENCH_JWT_SECRET
PASSWORD=bench-password
cp "$ROOT/tests/fixtures/ec.pem" "$ROOT/tests/fixtures/ed25519.pem" "$WORK/"

authgate_config() { # file port algorithm-lines bcrypt-cost
  cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
max_connections = 25000
# As nginx's "keepalive 64" below: the same idle upstream connections.
upstream_keepalive = 64
${BENCH_WORKERS:+worker_threads = $BENCH_WORKERS}

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:$P_UP"
auth = "required"

[jwt]
$3
access_ttl = "2h"
refresh_ttl = "1h"

[users]
backend = "file"
path = "users.toml"
bcrypt_cost = ${4:-4}

[sessions]
backend = "redis"
redis_url = "redis://127.0.0.1:$P_REDIS/0"
key_prefix = "bench:"

[cookies]
secure = false
EOF
}
HS='algorithm = "HS256"
secret_env = "BENCH_JWT_SECRET"'
authgate_config "$WORK/hs256.toml" $P_AG "$HS"
authgate_config "$WORK/logs.toml" $P_AG_LOGS "$HS"
authgate_config "$WORK/assert.toml" $P_AG_AS "$HS"
# The assertion's cost: what the same request pays with it on (case 1).
printf '\n[identity]\nassertion = true\nassertion_key = "ec.pem"\n' >>"$WORK/assert.toml"
authgate_config "$WORK/es256.toml" $P_AG_ES "algorithm = \"ES256\"
private_key = \"ec.pem\""
authgate_config "$WORK/eddsa.toml" $P_AG_ED "algorithm = \"EdDSA\"
private_key = \"ed25519.pem\""
printf '%s' "$PASSWORD" | "$AUTHGATE" -c "$WORK/hs256.toml" users add bench \
  --email bench@example.com --role bench --role reader --password-stdin >/dev/null
# 64 storm users sharing one cost-12 hash: one username per client, as 64
# people logging in would be (more than `max_failures` parallel logins of one
# username are refused by design, see docs/security.md, "Login throttling").
STORM_HASH=$(printf '%s' "$PASSWORD" | "$AUTHGATE" -c "$WORK/hs256.toml" hash-password --cost 12)
for i in $(seq 0 63); do
  printf '\n[[users]]\nusername = "storm%d"\npassword_hash = "%s"\nroles = ["bench"]\n' "$i" "$STORM_HASH"
done >>"$WORK/users.toml"

cat >"$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 16000; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  client_max_body_size 0;
  upstream up { server 127.0.0.1:$P_UP; keepalive 64; }
  # Default buffers.
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
    }
  }
  # 64 KiB proxy buffers, for case 7.
  server {
    listen 127.0.0.1:$P_NGINX64 backlog=4096;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_busy_buffers_size 128k;
    }
  }
}
EOF

cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend jwt
  bind 127.0.0.1:$P_HAPROXY
  http-request del-header X-Auth-User
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str HS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$SECRET") -m int 1 }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request set-header X-Auth-User %[var(txn.bearer),jwt_payload_query('\$.sub')]
  default_backend up
backend up
  http-reuse always
  server up 127.0.0.1:$P_UP maxconn 1000
EOF

# ------------------------------------------------------------ processes
start redis redis-server --port $P_REDIS --bind 127.0.0.1 --save "" --appendonly no
start upstream "$UPSTREAM" "127.0.0.1:$P_UP"
start nginx nginx -p "$WORK/nginx" -e "$WORK/nginx/logs/error.log" -c "$WORK/nginx/nginx.conf" -g 'daemon off;'
start haproxy haproxy -db -f "$WORK/haproxy.cfg"
start floor "$FLOOR" "127.0.0.1:$P_FLOOR" "127.0.0.1:$P_UP"
start floor-raw "$FLOOR_RAW" "127.0.0.1:$P_RAW" "127.0.0.1:$P_UP"
RUST_LOG=warn start authgate "$AUTHGATE" -c "$WORK/hs256.toml" serve
RUST_LOG=info start authgate-logs "$AUTHGATE" -c "$WORK/logs.toml" serve
RUST_LOG=warn start authgate-assert "$AUTHGATE" -c "$WORK/assert.toml" serve
RUST_LOG=warn start authgate-es256 "$AUTHGATE" -c "$WORK/es256.toml" serve
RUST_LOG=warn start authgate-eddsa "$AUTHGATE" -c "$WORK/eddsa.toml" serve
for p in $P_REDIS $P_UP $P_NGINX $P_NGINX64 $P_HAPROXY $P_FLOOR $P_RAW $P_AG $P_AG_LOGS $P_AG_AS $P_AG_ES $P_AG_ED; do
  wait_port "$p"
done
# A process that exited at once most likely found its port taken: whatever
# answers there instead (say, a Redis left from another run) is not measured.
for pid in "${PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null || { log "pid $pid exited at start (port in use?), see $WORK/*.log"; exit 1; }
done
NGINX_WORKER=$(pgrep -P "$PID_nginx" | head -1)

TOKEN=$($HELPER mint --secret "$SECRET")
EXPIRED=$($HELPER mint --secret "$SECRET" --exp-in -60)
TOKEN_ES=$($HELPER login --port $P_AG_ES --user bench --password "$PASSWORD")
TOKEN_ED=$($HELPER login --port $P_AG_ED --user bench --password "$PASSWORD")
for p in $P_NGINX $P_HAPROXY $P_AG $P_AG_AS; do # the HS256 token passes all four
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$p/")
  [[ $code == 200 ]] || { log "port $p answered $code to the bench token"; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $EXPIRED" "http://127.0.0.1:$P_HAPROXY/")
[[ $code == 401 ]] || { log "HAProxy accepted an expired token ($code)"; exit 1; }

LOAD_BEFORE=$(uptime)
log "load: $LOAD_BEFORE"

WRK=(taskset -c "$CCPU" wrk -t1 -c"$CONNS" --latency)

# target -> port and request options
run_target() { # target round duration
  local target=$1 out=$2 d=$3
  case $target in
  nginx) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_NGINX/" ;;
  haproxy) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_HAPROXY/" ;;
  hyper-floor) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_FLOOR/" ;;
  raw-floor) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_RAW/" ;;
  authgate) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_AG/" ;;
  authgate-logs) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_AG_LOGS/" ;;
  authgate-assert) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$P_AG_AS/" ;;
  authgate-cookie) "${WRK[@]}" -d"$d" -H "Cookie: theme=dark; access_token=$TOKEN" "http://127.0.0.1:$P_AG/" ;;
  authgate-es256) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN_ES" "http://127.0.0.1:$P_AG_ES/" ;;
  authgate-eddsa) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN_ED" "http://127.0.0.1:$P_AG_ED/" ;;
  authgate-refresh)
    # Fresh sessions for every run: a refresh token is presented once.
    $HELPER seeds --port $P_AG --user bench --password "$PASSWORD" --n 400 --out "$WORK/seeds.txt"
    "${WRK[@]}" -d"$d" -s "$ROOT/bench/lua/refresh.lua" "http://127.0.0.1:$P_AG/" -- "$WORK/seeds.txt" "$EXPIRED" ;;
  esac >"$out" 2>&1
}

TARGETS=()
has 1 && TARGETS+=(nginx haproxy hyper-floor raw-floor authgate authgate-logs authgate-assert)
has 2 && TARGETS+=(authgate-cookie)
has 3 && TARGETS+=(authgate-es256 authgate-eddsa)
has 4 && TARGETS+=(authgate-refresh)
if ((${#TARGETS[@]})); then
  log "warm-up"
  for t in "${TARGETS[@]}"; do run_target "$t" "$WORK/warmup-$t.txt" 2s; done
  for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      log "round $r/$ROUNDS: $t"
      run_target "$t" "$WORK/raw/$t.r$r.txt" "$DUR"
      grep -h "Requests/sec" "$WORK/raw/$t.r$r.txt" >&2 || cat "$WORK/raw/$t.r$r.txt" >&2
      sleep 1
    done
  done
fi

if has 5; then
  log "case 5: quiet, then during a login storm"
  run_target authgate "$WORK/storm-quiet.txt" "$DUR"
  sleep 1
  secs=${DUR%s}
  taskset -c "$CCPU" wrk -t1 -c64 -d"$((secs + 4))s" --timeout 60s -s "$ROOT/bench/lua/login.lua" \
    "http://127.0.0.1:$P_AG/token" -- storm 64 "$PASSWORD" >"$WORK/storm-logins.txt" 2>&1 &
  storm=$!
  sleep 2
  run_target authgate "$WORK/storm-during.txt" "$DUR"
  wait $storm || true
  wait_idle "$PID_authgate"
  printf '{"quiet": "%s", "during": "%s", "logins": "%s"}\n' \
    "$WORK/storm-quiet.txt" "$WORK/storm-during.txt" "$WORK/storm-logins.txt" >"$WORK/storm.json"
fi

if has 7; then
  log "case 7: 1 GiB down and up"
  truncate -s 1G "$WORK/upload.bin"
  transfer() { # pid port direction -> "MB/s peak_kib"
    local pid=$1 port=$2 dir=$3 res
    echo 5 >"/proc/$pid/clear_refs" # resets the peak RSS to the current RSS
    if [[ $dir == down ]]; then
      res=$(taskset -c "$CCPU" curl -s -o /dev/null --max-time 60 -H "Authorization: Bearer $TOKEN" \
        -w '%{size_download} %{time_total} %{http_code}' "http://127.0.0.1:$port/big")
    else
      res=$(taskset -c "$CCPU" curl -s -o /dev/null --max-time 60 -H "Authorization: Bearer $TOKEN" -H 'Expect:' \
        -T "$WORK/upload.bin" -w '%{size_upload} %{time_total} %{http_code}' "http://127.0.0.1:$port/upload")
    fi
    read -r bytes secs code <<<"$res"
    [[ $code == 200 && $bytes == 1073741824 ]] || log "$port $dir: $res"
    echo "$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.1f", b / s / 1e6 }') $($HELPER rss --peak --pids "$pid")"
  }
  specs=("nginx (default buffers):$NGINX_WORKER:$P_NGINX" "nginx (64 KiB buffers):$NGINX_WORKER:$P_NGINX64"
    "haproxy:$PID_haproxy:$P_HAPROXY" "authgate:$PID_authgate:$P_AG")
  declare -A BASE DOWN UP DPEAK UPEAK
  for spec in "${specs[@]}"; do
    IFS=: read -r name pid port <<<"$spec"
    BASE[$name]=$($HELPER rss --pids "$pid")
  done
  # Rounds interleaved across targets, as for the other cases; the median
  # transfer of each, and the highest peak.
  for round in $(seq "$ROUNDS"); do
    log "case 7: round $round/$ROUNDS"
    for spec in "${specs[@]}"; do
      IFS=: read -r name pid port <<<"$spec"
      read -r down dpeak <<<"$(transfer "$pid" "$port" down)"
      read -r up upeak <<<"$(transfer "$pid" "$port" up)"
      DOWN[$name]+="$down "
      UP[$name]+="$up "
      DPEAK[$name]=$(( dpeak > ${DPEAK[$name]:-0} ? dpeak : ${DPEAK[$name]:-0} ))
      UPEAK[$name]=$(( upeak > ${UPEAK[$name]:-0} ? upeak : ${UPEAK[$name]:-0} ))
    done
  done
  median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  {
    printf '{'
    sep=
    for spec in "${specs[@]}"; do
      IFS=: read -r name pid port <<<"$spec"
      printf '%s"%s": {"down_mbs": %s, "up_mbs": %s, "base_kib": %s, "down_peak_kib": %s, "up_peak_kib": %s}' \
        "$sep" "$name" "$(median <<<"${DOWN[$name]}")" "$(median <<<"${UP[$name]}")" "${BASE[$name]}" \
        "${DPEAK[$name]}" "${UPEAK[$name]}"
      sep=', '
    done
    printf '}\n'
  } >"$WORK/stream.json"
  cat "$WORK/stream.json" >&2
fi

if has 6; then
  log "case 6: $IDLE_N idle connections"
  {
    printf '{"nginx": '
    taskset -c "$CCPU" $HELPER idle --port $P_NGINX --pids "$NGINX_WORKER" --token "$TOKEN" --n "$IDLE_N"
    printf ', "authgate": '
    taskset -c "$CCPU" $HELPER idle --port $P_AG --pids "$PID_authgate" --token "$TOKEN" --n "$IDLE_N"
    printf '}\n'
  } >"$WORK/idle.json"
  cat "$WORK/idle.json" >&2
fi

LOAD_AFTER=$(uptime)
log "load: $LOAD_AFTER"
redis-cli -p $P_REDIS info memory | grep -E '^used_memory_human' >&2 || true

mkdir -p "$(dirname "$OUT")"
{
  echo "# authgate benchmark results"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src || echo ' (+ uncommitted changes)')"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r)"
  echo "- peers: $(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v | head -1 | cut -d' ' -f1-3), wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
  echo "- setup: proxy + upstream (bench/upstream.rs, one thread) + Redis on CPU $PCPU, wrk on CPU $CCPU;" \
    "wrk -t1 -c$CONNS -d$DUR keep-alive GET of a 2-byte body; $ROUNDS interleaved rounds, medians;" \
    "authgate with RUST_LOG=warn (no access log) unless noted${BENCH_WORKERS:+, worker_threads = $BENCH_WORKERS}"
  echo "- load before: \`${LOAD_BEFORE##*load average: }\`; after: \`${LOAD_AFTER##*load average: }\` (1, 5, 15 min)"
  echo
  $HELPER report --dir "$WORK"
} >"$OUT"
cat "$OUT"
