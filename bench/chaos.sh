#!/usr/bin/env bash
# authgate chaos run: a steady mixed load (bench/chaos_load.rs, one core)
# through nginx to authgate on a private Redis (AOF on) and a private
# PostgreSQL, while the dependencies fail one after the other: Redis
# killed (SIGKILL) and restarted 5 s later, Redis paused (SIGSTOP) 3 s,
# PostgreSQL stopped (fast) and started 5 s later, the upstream killed and
# restarted, and a second authgate behind the same nginx taking over while
# the first drains on SIGTERM. See docs/reliability.md.
#
#   bench/chaos.sh                          # 90 s of load, ~2 min with the build
#   CHAOS_KEEP=1 bench/chaos.sh             # keep the work folder (logs, configs)
#
# Environment: CHAOS_DURATION (90, seconds), CHAOS_PAUSE (3: seconds Redis
# stays paused; longer than [sessions] reuse_grace checks that a long hang
# loses no session either, see docs/reliability.md), CHAOS_CLIENT_CPU (1: the
# core the load is pinned to), CHAOS_SESSION_TIMEOUT ([sessions] timeout,
# 2s), CHAOS_OUT (bench/results/chaos-latest.md), CHAOS_KEEP=1.
# Everything runs on loopback on free ports; whatever it starts is stopped
# by PID at exit. Exit status 1 when a zero-count is not zero or a target
# is missed.
set -euo pipefail

NAME=chaos
source "$(dirname "$0")/stack.sh"
DURATION=${CHAOS_DURATION:-90}
PAUSE=${CHAOS_PAUSE:-3}
OUT=${CHAOS_OUT:-$ROOT/bench/results/chaos-latest.md}
P_FRONT=$(free_port)
P_AG1=$(free_port) P_ADM1=$(free_port)
P_AG2=$(free_port) P_ADM2=$(free_port)

need_tools nginx
build
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ------------------------------------------------------------ the stack
redis_start
pg_init
pg_start
seed_users
upstream_start
authgate_start authgate1 "$P_AG1" "$P_ADM1"

# nginx_conf SERVER...: the front, balancing over the given authgates.
# Keep-alive to them, and a retry on the next one when a connection fails
# before an answer (a closed idle connection, a refused connect while an
# instance drains): logins and logouts are safe to send again (a refresh
# sent twice gets the same successor within the grace).
nginx_conf() {
  local servers=""
  for port in "$@"; do servers+="    server 127.0.0.1:$port max_fails=0;"$'\n'; done
  cat <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream authgate {
$servers    keepalive 64;
  }
  server {
    listen 127.0.0.1:$P_FRONT;
    location / {
      proxy_pass http://authgate;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_next_upstream error timeout non_idempotent;
      proxy_next_upstream_tries 3;
      proxy_read_timeout 30s;
    }
  }
}
EOF
}
mkdir -p "$WORK/nginx"
nginx_conf "$P_AG1" >"$WORK/nginx/nginx.conf"
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PID[nginx]=$!
wait_port "$P_FRONT"

# ------------------------------------------------------------ the load
PHASES=$WORK/phases
: >"$PHASES"
phase() { echo "$*" >>"$PHASES"; log "phase: $*"; }
phase baseline ok -
taskset -c "$CLIENT_CPU" "$LOAD" load --url "http://127.0.0.1:$P_FRONT" \
  --duration "${DURATION}s" --phases "$PHASES" --out "$WORK/table.md" \
  --session-timeout "$SESSION_TIMEOUT" >"$WORK/load.out" 2>"$WORK/load.err" &
LOAD_PID=$!
PID[load]=$LOAD_PID
started=$(date +%s)

sleep 8
phase redis-kill fault redis
kill -KILL "${PID[redis]}"; wait "${PID[redis]}" 2>/dev/null || true
sleep 5
redis_start
phase redis-kill-after ok redis

sleep 8
phase redis-pause fault redis
kill -STOP "${PID[redis]}"
sleep "$PAUSE"
kill -CONT "${PID[redis]}"
phase redis-pause-after ok redis

sleep 8
phase postgres-stop fault postgres
pg_stop
sleep 5
pg_start
phase postgres-stop-after ok postgres

sleep 8
phase upstream-kill fault upstream
kill -KILL "${PID[upstream]}"; wait "${PID[upstream]}" 2>/dev/null || true
sleep 3
upstream_start
phase upstream-kill-after ok upstream

sleep 8
# The second instance joins the front, then the first drains.
authgate_start authgate2 "$P_AG2" "$P_ADM2"
nginx_conf "$P_AG1" "$P_AG2" >"$WORK/nginx/nginx.conf"
kill -HUP "${PID[nginx]}"
sleep 2
phase drain-both ok -
sleep 3
restarts=0
kill -0 "${PID[authgate1]}" 2>/dev/null || restarts=$((restarts + 1))
phase drain ok -
term_at=$(date +%s.%N)
kill -TERM "${PID[authgate1]}"
drain_status=0
wait "${PID[authgate1]}" || drain_status=$?
drained=$(awk "BEGIN{print $(date +%s.%N) - $term_at}")
unset 'PID[authgate1]'
# What the orchestrator does next: the front forgets the stopped instance.
nginx_conf "$P_AG2" >"$WORK/nginx/nginx.conf"
kill -HUP "${PID[nginx]}"
phase drain-after ok -

wait "$LOAD_PID" && load_status=0 || load_status=$?
unset 'PID[load]'
elapsed=$(($(date +%s) - started))
kill -0 "${PID[authgate2]}" 2>/dev/null || restarts=$((restarts + 1))
n_panics=$(panics)

# ------------------------------------------------------------ the report
{
  echo "# Chaos run, $(date -u +'%Y-%m-%d %H:%M UTC')"
  echo
  echo "${DURATION} s of mixed load from one core (bench/chaos_load.rs) through nginx;"
  echo "authgate $(git -C "$ROOT" rev-parse --short HEAD), Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') (appendonly yes),"
  echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), nginx $(nginx -v 2>&1 | sed 's|.*/||'); \`[sessions] timeout\` = $SESSION_TIMEOUT, \`[jwt] access_ttl\` = 3s."
  echo
  cat "$WORK/table.md"
  echo
  echo "| check | value | target |"
  echo "|---|---:|---:|"
  echo "| authgate panics (both logs) | $n_panics | 0 |"
  echo "| authgate restarts / deaths | $restarts | 0 |"
  echo "| authgate 1 exit status after SIGTERM | $drain_status | 0 |"
  echo "| authgate 1 drain time | $(printf '%.2f' "$drained") s | ≤ shutdown_grace (10 s) |"
  echo "| schedule length | $elapsed s | ≤ $DURATION s |"
} >"$WORK/report.md"
cat "$WORK/report.md"
mkdir -p "$(dirname "$OUT")"
cp "$WORK/report.md" "$OUT"
log "table written to $OUT"

status=0
((load_status == 0)) || status=1
((n_panics == 0 && restarts == 0 && drain_status == 0)) || status=1
((elapsed <= DURATION + 5)) || { log "the fault schedule outran the load"; status=1; }
if ((status != 0)); then
  log "FAILED: a zero-count is not zero or a target is missed"
  tail -5 "$WORK/load.err" >&2 || true
fi
exit $status
