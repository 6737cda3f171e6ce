#!/usr/bin/env bash
# authgate benchmark: authgate beside nginx (plain proxy), HAProxy 2.6
# (jwt_verify) and, in case 1, hyper's server in front of hyper's client
# with nothing else (bench/floor.rs) and a bare tokio + httparse forwarder
# (bench/floor_raw.rs), on loopback, proxy + upstream pinned to one core and the
# load generator to another; cases 8-10 over TLS 1.3 (one ECDSA P-256
# certificate, no session resumption on any side), with bench/floor.rs over
# TLS (rustls as authgate configures it, hyper, nothing else) in cases 9
# and 10. Each load is measured in
# requests a second and in the proxy's own CPU time per request (utime +
# stime from /proc). See docs/performance.md.
#
#   bench/run.sh                       # everything: 3 rounds of 10 s, ~12 min
#   BENCH_DURATION=2s BENCH_ROUNDS=1 BENCH_CASES="1 2" bench/run.sh   # smoke
#   BENCH_CASES="1 8 9 10" BENCH_ROUNDS=5 bench/run.sh                   # the edge
#
# Environment: BENCH_CASES (default "1 2 3 4 5 6 7 8 9 10"), BENCH_ROUNDS (5),
# BENCH_DURATION (10s), BENCH_CONNECTIONS (50), BENCH_PROXY_CPU (0),
# BENCH_CLIENT_CPU (1), BENCH_IDLE (10000), BENCH_WORKERS (authgate
# [server] worker_threads, default unset: one per core it may run on),
# BENCH_OUT (bench/results/latest.md), BENCH_KEEP=1 keeps the work folder,
# BENCH_BEFORE (another authgate binary, measured beside this one as
# "before" in cases 1 and 8-10: an A/B in one run), BENCH_FLOOD=0 skips the
# flood of new connections after case 8.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CASES=" ${BENCH_CASES:-1 2 3 4 5 6 7 8 9 10} "
ROUNDS=${BENCH_ROUNDS:-5}
DUR=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNECTIONS:-50}
PCPU=${BENCH_PROXY_CPU:-0}
CCPU=${BENCH_CLIENT_CPU:-1}
IDLE_N=${BENCH_IDLE:-10000}
OUT=${BENCH_OUT:-$ROOT/bench/results/latest.md}
HELPER="python3 $ROOT/bench/helper.py"

P_UP=18001 P_NGINX=18010 P_NGINX64=18011 P_HAPROXY=18020
P_AG=18030 P_AG_LOGS=18031 P_AG_ES=18032 P_AG_ED=18033 P_AG_AS=18034 P_FLOOR=18040 P_RAW=18041 P_REDIS=16379
P_NGINX_LOG=18012 P_AG_LOGFILE=18035 P_AG_LOGSTDOUT=18036 P_AG_BEFORE=18037
P_NGINX_TLS=18050 P_HAPROXY_TLS=18051 P_AG_TLS=18052 P_AG_TLS_BEFORE=18053 P_FLOOR_TLS=18054

has() { [[ "$CASES" == *" $1 "* ]]; }
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

# ------------------------------------------------------------ tools
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
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
# The access log as operators run it: JSON lines to a file, and to stdout
# read through a pipe, as a container runtime reads it. The `[access_log]`
# table is newer than some binaries this script may measure (BENCH_BEFORE):
# an instance that refuses it is left out with a note (see start_optional).
authgate_config "$WORK/logfile.toml" $P_AG_LOGFILE "$HS"
printf '\n[access_log]\ntarget = "file"\npath = "%s"\n' "$WORK/ag-access.log" >>"$WORK/logfile.toml"
authgate_config "$WORK/logstdout.toml" $P_AG_LOGSTDOUT "$HS"
printf '\n[access_log]\ntarget = "stdout"\n' >>"$WORK/logstdout.toml"
sed -i 's/^log_format = .*//; /^\[server\]$/a log_format = "json"' "$WORK/logfile.toml" "$WORK/logstdout.toml"
authgate_config "$WORK/before.toml" $P_AG_BEFORE "$HS"

# TLS (cases 8-10): one ECDSA P-256 certificate for every server, TLS 1.3
# only, no session resumption or tickets on any side, so that each new
# connection is a full handshake (wrk resumes whenever a server lets it).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
cat "$WORK/tls.crt" "$WORK/tls.key" >"$WORK/tls.pem"
tls_config() { # file port
  authgate_config "$1" "$2" "$HS"
  printf '\n[server.tls]\ncert = "tls.crt"\nkey = "tls.key"\nmin_version = "1.3"\nsession_resumption = false\n' >>"$1"
}
tls_config "$WORK/tls.toml" $P_AG_TLS
tls_config "$WORK/tls-before.toml" $P_AG_TLS_BEFORE
# What a client that offers only P-256 for the key exchange gets (wrk and
# h2load link OpenSSL, which reads this file).
printf 'openssl_conf = c\n[c]\nssl_conf = s\n[s]\nsystem_default = d\n[d]\nGroups = P-256\n' >"$WORK/openssl-p256.cnf"

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
  # Its own access log on, buffered, as operators run it (case 1).
  log_format json escape=json '{"time":"\$time_iso8601","remote":"\$remote_addr","method":"\$request_method",'
    '"uri":"\$request_uri","status":\$status,"bytes":\$body_bytes_sent,"ms":\$request_time,'
    '"upstream_ms":"\$upstream_response_time","agent":"\$http_user_agent"}';
  server {
    listen 127.0.0.1:$P_NGINX_LOG backlog=4096;
    access_log $WORK/nginx/logs/access.log json buffer=64k flush=1s;
    location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;
    }
  }
  # A plain TLS proxy, HTTP/1.1 or HTTP/2 by ALPN (cases 8-10).
  server {
    listen 127.0.0.1:$P_NGINX_TLS ssl http2 backlog=4096;
    ssl_certificate $WORK/tls.crt;
    ssl_certificate_key $WORK/tls.key;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    http2_max_concurrent_streams 128;
    keepalive_requests 1000000;
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

haproxy_jwt() { # the same checks on the plain and the TLS frontend
  cat <<EOF
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
EOF
}
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
  # No session cache and no tickets: every new connection a full handshake.
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend jwt
  bind 127.0.0.1:$P_HAPROXY
$(haproxy_jwt)
frontend jwt-tls
  bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $WORK/tls.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3 no-tls-tickets
$(haproxy_jwt)
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
start floor-tls "$FLOOR" "127.0.0.1:$P_FLOOR_TLS" "127.0.0.1:$P_UP" "$WORK/tls.crt" "$WORK/tls.key"
RUST_LOG=warn start authgate "$AUTHGATE" -c "$WORK/hs256.toml" serve
RUST_LOG=info start authgate-logs "$AUTHGATE" -c "$WORK/logs.toml" serve
RUST_LOG=warn start authgate-assert "$AUTHGATE" -c "$WORK/assert.toml" serve
RUST_LOG=warn start authgate-es256 "$AUTHGATE" -c "$WORK/es256.toml" serve
RUST_LOG=warn start authgate-eddsa "$AUTHGATE" -c "$WORK/eddsa.toml" serve
RUST_LOG=warn start authgate-tls "$AUTHGATE" -c "$WORK/tls.toml" serve
for p in $P_REDIS $P_UP $P_NGINX $P_NGINX64 $P_NGINX_LOG $P_NGINX_TLS $P_HAPROXY $P_HAPROXY_TLS $P_FLOOR $P_RAW $P_FLOOR_TLS \
  $P_AG $P_AG_LOGS $P_AG_AS $P_AG_ES $P_AG_ED $P_AG_TLS; do
  wait_port "$p"
done
# A process that exited at once most likely found its port taken: whatever
# answers there instead (say, a Redis left from another run) is not measured.
for pid in "${PIDS[@]}"; do
  kill -0 "$pid" 2>/dev/null || { log "pid $pid exited at start (port in use?), see $WORK/*.log"; exit 1; }
done
NGINX_WORKER=$(pgrep -P "$PID_nginx" | head -1)

# Instances a binary may refuse (a configuration key it does not know yet):
# one that exits at start is left out of the rounds, with its first error
# line as the note in the report.
SKIPPED=()
start_optional() { # name port cmd...
  local name=$1 port=$2; shift 2
  start "$name" "$@"
  if wait_port "$port" 2>/dev/null && kill -0 "$(eval echo "\$PID_${name//-/_}")" 2>/dev/null; then
    return 0
  fi
  SKIPPED+=("$name")
  grep -m1 -i 'error\|unknown' "$WORK/$name.log" | cut -c1-200 >"$WORK/raw/$name.skip" || echo "did not start" >"$WORK/raw/$name.skip"
  log "$name left out: $(cat "$WORK/raw/$name.skip")"
}
if has 1; then
  RUST_LOG=warn start_optional authgate-logfile $P_AG_LOGFILE "$AUTHGATE" -c "$WORK/logfile.toml" serve
  # stdout through a pipe to a reader on the same core, as `| cat > file`.
  mkfifo "$WORK/stdout.fifo"
  taskset -c "$PCPU" cat "$WORK/stdout.fifo" >"$WORK/ag-stdout.log" &
  PIDS+=($!)
  RUST_LOG=warn FIFO="$WORK/stdout.fifo" start_optional authgate-logstdout $P_AG_LOGSTDOUT \
    bash -c 'exec "$@" >"$FIFO"' - "$AUTHGATE" -c "$WORK/logstdout.toml" serve
fi
if [[ -n "${BENCH_BEFORE:-}" ]]; then
  RUST_LOG=warn start_optional authgate-before $P_AG_BEFORE "$BENCH_BEFORE" -c "$WORK/before.toml" serve
  RUST_LOG=warn start_optional authgate-tls-before $P_AG_TLS_BEFORE "$BENCH_BEFORE" -c "$WORK/tls-before.toml" serve
fi

TOKEN=$($HELPER mint --secret "$SECRET")
EXPIRED=$($HELPER mint --secret "$SECRET" --exp-in -60)
TOKEN_ES=$($HELPER login --port $P_AG_ES --user bench --password "$PASSWORD")
TOKEN_ED=$($HELPER login --port $P_AG_ED --user bench --password "$PASSWORD")
for url in http://127.0.0.1:{$P_NGINX,$P_HAPROXY,$P_AG,$P_AG_AS}/ https://127.0.0.1:{$P_NGINX_TLS,$P_HAPROXY_TLS,$P_AG_TLS}/; do
  code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$url")
  [[ $code == 200 ]] || { log "$url answered $code to the bench token"; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $EXPIRED" "http://127.0.0.1:$P_HAPROXY/")
[[ $code == 401 ]] || { log "HAProxy accepted an expired token ($code)"; exit 1; }

LOAD_BEFORE=$(uptime)
log "load: $LOAD_BEFORE"

WRK=(taskset -c "$CCPU" wrk -t1 -c"$CONNS" --latency)
H2LOAD=(taskset -c "$CCPU" h2load -t1 -c10 -m100)
CLK_TCK=$(getconf CLK_TCK)

# The processes whose CPU time a target's requests cost: the proxy alone
# (not the upstream, Redis or the load generator).
pids_of() {
  case $1 in
  nginx*) echo "$NGINX_WORKER" ;;
  haproxy*) echo "$PID_haproxy" ;;
  hyper-floor) echo "$PID_floor" ;;
  hyper-floor-tls-*) echo "$PID_floor_tls" ;;
  raw-floor) echo "$PID_floor_raw" ;;
  authgate-cookie | authgate-refresh) echo "$PID_authgate" ;;
  authgate-tls-before*) echo "$PID_authgate_tls_before" ;;
  authgate-tls*) echo "$PID_authgate_tls" ;;
  authgate*) local v="PID_${1//-/_}"; echo "${!v}" ;;
  esac
}
ticks() { # utime + stime of the processes, all their threads, in clock ticks
  local sum=0 pid
  for pid in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
  echo "$sum"
}

# wrk against a target's port, keep-alive or one connection a request.
url_of() {
  case $1 in
  nginx) echo "http://127.0.0.1:$P_NGINX/" ;;
  nginx-log) echo "http://127.0.0.1:$P_NGINX_LOG/" ;;
  haproxy) echo "http://127.0.0.1:$P_HAPROXY/" ;;
  hyper-floor) echo "http://127.0.0.1:$P_FLOOR/" ;;
  hyper-floor-tls-*) echo "https://127.0.0.1:$P_FLOOR_TLS/" ;;
  raw-floor) echo "http://127.0.0.1:$P_RAW/" ;;
  authgate | authgate-cookie | authgate-refresh) echo "http://127.0.0.1:$P_AG/" ;;
  authgate-logs) echo "http://127.0.0.1:$P_AG_LOGS/" ;;
  authgate-logfile) echo "http://127.0.0.1:$P_AG_LOGFILE/" ;;
  authgate-logstdout) echo "http://127.0.0.1:$P_AG_LOGSTDOUT/" ;;
  authgate-assert) echo "http://127.0.0.1:$P_AG_AS/" ;;
  authgate-before) echo "http://127.0.0.1:$P_AG_BEFORE/" ;;
  authgate-es256) echo "http://127.0.0.1:$P_AG_ES/" ;;
  authgate-eddsa) echo "http://127.0.0.1:$P_AG_ED/" ;;
  *-tls-before-*) echo "https://127.0.0.1:$P_AG_TLS_BEFORE/" ;;
  nginx-tls-*) echo "https://127.0.0.1:$P_NGINX_TLS/" ;;
  haproxy-tls-*) echo "https://127.0.0.1:$P_HAPROXY_TLS/" ;;
  authgate-tls-*) echo "https://127.0.0.1:$P_AG_TLS/" ;;
  esac
}

run_target() { # target output duration
  local target=$1 out=$2 d=$3 url
  url=$(url_of "$target")
  case $target in
  authgate-cookie) "${WRK[@]}" -d"$d" -H "Cookie: theme=dark; access_token=$TOKEN" "$url" ;;
  authgate-es256) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN_ES" "$url" ;;
  authgate-eddsa) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN_ED" "$url" ;;
  authgate-refresh)
    # Fresh sessions for every run: a refresh token is presented once.
    $HELPER seeds --port $P_AG --user bench --password "$PASSWORD" --n 400 --out "$WORK/seeds.txt"
    "${WRK[@]}" -d"$d" -s "$ROOT/bench/lua/refresh.lua" "$url" -- "$WORK/seeds.txt" "$EXPIRED" ;;
  # Case 8: a new connection, so a full handshake, for every request.
  *-hs) "${WRK[@]}" -d"$d" -H "Connection: close" -H "Authorization: Bearer $TOKEN" "$url" ;;
  # The same for a client that offers only P-256 for the key exchange.
  *-hs-p256) OPENSSL_CONF="$WORK/openssl-p256.cnf" "${WRK[@]}" -d"$d" -H "Connection: close" \
    -H "Authorization: Bearer $TOKEN" "$url" ;;
  # Case 10: HTTP/2, 10 connections with 100 streams each.
  *-h2) "${H2LOAD[@]}" -D"${d%s}" -H "authorization: Bearer $TOKEN" "$url" ;;
  *) "${WRK[@]}" -d"$d" -H "Authorization: Bearer $TOKEN" "$url" ;;
  esac >"$out" 2>&1
}

# run_target, with the proxy's CPU time over the run appended for the report.
measure() { # target output duration
  local pids before after
  read -ra pids <<<"$(pids_of "$1")"
  before=$(ticks "${pids[@]}")
  run_target "$@"
  after=$(ticks "${pids[@]}")
  printf 'bench: cpu_ticks=%d\nbench: clk_tck=%d\n' $((after - before)) "$CLK_TCK" >>"$2"
}

skipped() { [[ " ${SKIPPED[*]} " == *" $1 "* ]]; }

BEFORE=${BENCH_BEFORE:+1}
TARGETS=()
has 1 && TARGETS+=(nginx haproxy hyper-floor raw-floor authgate authgate-logs authgate-logfile authgate-logstdout
  nginx-log authgate-assert ${BEFORE:+authgate-before})
has 2 && TARGETS+=(authgate-cookie)
has 3 && TARGETS+=(authgate-es256 authgate-eddsa)
has 4 && TARGETS+=(authgate-refresh)
has 8 && TARGETS+=(nginx-tls-hs haproxy-tls-hs authgate-tls-hs ${BEFORE:+authgate-tls-before-hs}
  nginx-tls-hs-p256 authgate-tls-hs-p256)
has 9 && TARGETS+=(nginx-tls-ka haproxy-tls-ka hyper-floor-tls-ka authgate-tls-ka ${BEFORE:+authgate-tls-before-ka})
has 10 && TARGETS+=(nginx-tls-h2 haproxy-tls-h2 hyper-floor-tls-h2 authgate-tls-h2 ${BEFORE:+authgate-tls-before-h2})
for t in "${SKIPPED[@]}"; do # left out of the rounds
  for i in "${!TARGETS[@]}"; do
    [[ ${TARGETS[$i]} == "$t" || ${TARGETS[$i]} == "$t"-* ]] && unset 'TARGETS[i]'
  done
done
TARGETS=("${TARGETS[@]}")
if ((${#TARGETS[@]})); then
  log "warm-up"
  for t in "${TARGETS[@]}"; do run_target "$t" "$WORK/warmup-$t.txt" 2s; done
  for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      log "round $r/$ROUNDS: $t"
      measure "$t" "$WORK/raw/$t.r$r.txt" "$DUR"
      grep -h "Requests/sec\|^finished in" "$WORK/raw/$t.r$r.txt" >&2 || cat "$WORK/raw/$t.r$r.txt" >&2
      sleep 1
    done
  done
fi

if has 8 && [[ ${BENCH_FLOOD:-1} == 1 ]]; then
  # Twice the handshakes a second the core can take (1 / case 8's CPU
  # time per handshake), offered as new
  # connections at a fixed rate (h2load --rate, one request each), while a
  # keep-alive HTTPS client (case 9's, 10 connections) measures what the
  # established connections see; authgate's RSS sampled throughout.
  hs=$($HELPER capacity --dir "$WORK" --target authgate-tls-hs)
  rate=$((hs * 2))
  # Three seconds' worth: one client core opens far fewer a second than
  # that (it verifies every handshake's signature), so the backlog it
  # leaves takes longer to drain; the keep-alive client runs meanwhile.
  secs=3
  total=$((rate * secs))
  log "flood: $rate new TLS connections a second for $secs s (2 x the $hs a core can take)"
  quiet_url=$(url_of authgate-tls-ka)
  taskset -c "$CCPU" wrk -t1 -c10 -d"$DUR" --latency -H "Authorization: Bearer $TOKEN" "$quiet_url" >"$WORK/flood-quiet.txt" 2>&1
  rss_before=$($HELPER rss --pids "$PID_authgate_tls")
  timeout 120 taskset -c "$CCPU" h2load --h1 -t1 -r "$rate" -c "$total" -n "$total" -T 20 \
    -H "authorization: Bearer $TOKEN" "$quiet_url" >"$WORK/flood-h2load.txt" 2>&1 &
  flood=$!
  ( while kill -0 $flood 2>/dev/null; do $HELPER rss --pids "$PID_authgate_tls"; sleep 0.5; done ) >"$WORK/flood-rss.txt" &
  sampler=$!
  sleep 1
  taskset -c "$CCPU" wrk -t1 -c10 -d"$DUR" --latency -H "Authorization: Bearer $TOKEN" "$quiet_url" >"$WORK/flood-during.txt" 2>&1
  wait $flood || true
  wait $sampler || true
  sleep 3
  rss_after=$($HELPER rss --pids "$PID_authgate_tls")
  printf '{"rate": %d, "secs": %d, "rss_before_kib": %d, "rss_after_kib": %d, "rss_samples": "%s", "quiet": "%s", "during": "%s", "flood": "%s"}\n' \
    "$rate" "$secs" "$rss_before" "$rss_after" "$WORK/flood-rss.txt" "$WORK/flood-quiet.txt" "$WORK/flood-during.txt" \
    "$WORK/flood-h2load.txt" >"$WORK/flood.json"
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
  echo "- peers: $(nginx -v 2>&1 | sed 's/.*: //') ($(nginx -V 2>&1 | grep -o 'built with OpenSSL [0-9.]*' | cut -d' ' -f3-)), $(haproxy -v | head -1 | cut -d' ' -f1-3), wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2), $(h2load --version | head -1)"
  echo "- setup: proxy + upstream (bench/upstream.rs, one thread) + Redis on CPU $PCPU, wrk on CPU $CCPU;" \
    "wrk -t1 -c$CONNS -d$DUR keep-alive GET of a 2-byte body (case 8: \`Connection: close\`; case 10: h2load -c10 -m100);" \
    "TLS 1.3, ECDSA P-256, no resumption; $ROUNDS interleaved rounds, medians (spread: lowest–highest round);" \
    "authgate with RUST_LOG=warn (no access log) unless noted${BENCH_WORKERS:+, worker_threads = $BENCH_WORKERS}"
  echo "- load before: \`${LOAD_BEFORE##*load average: }\`; after: \`${LOAD_AFTER##*load average: }\` (1, 5, 15 min)"
  echo
  $HELPER report --dir "$WORK"
} >"$OUT"
cat "$OUT"
