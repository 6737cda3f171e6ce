#!/usr/bin/env python3
"""Helpers for bench/run.sh: tokens, sessions, the idle-connection client,
RSS probes and the report. Standard library only."""

import argparse
import asyncio
import base64
import glob
import hashlib
import hmac
import http.client
import json
import os
import re
import resource
import statistics
import sys
import time
import uuid


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cmd_mint(a):
    """An HS256 access token as authgate issues them (iss, sub, exp, ...)."""
    now = int(time.time())
    claims = {
        "sub": a.sub,
        "exp": now + a.exp_in,
        "iat": now - 10,
        "nbf": now - 10,
        "iss": "authgate",
        "jti": str(uuid.uuid4()),
        "email": f"{a.sub}@example.com",
        "roles": ["bench", "reader"],
    }
    if a.exp_in < 0:
        claims["iat"] = claims["nbf"] = claims["exp"] - 900
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(a.secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    print(f"{head}.{body}.{b64(sig)}")


def login(conn, user, password):
    form = f"grant_type=password&username={user}&password={password}"
    conn.request("POST", "/token", body=form,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        sys.exit(f"login failed: {resp.status} {data[:200]!r}")
    return json.loads(data)


def cmd_login(a):
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    print(login(conn, a.user, a.password)["access_token"])


def cmd_seeds(a):
    """Logs in `n` times; writes one refresh token a line."""
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    deadline = time.time() + 120
    with open(a.out, "w") as out:
        for _ in range(a.n):
            if time.time() > deadline:
                sys.exit("seeding took more than 120 s")
            out.write(login(conn, a.user, a.password)["refresh_token"] + "\n")


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def hwm_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total


def cmd_rss(a):
    pids = [int(p) for p in a.pids.split(",")]
    print(hwm_kib(pids) if a.peak else rss_kib(pids))


async def idle_client(a):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pids = [int(p) for p in a.pids.split(",")]
    req = (f"GET /idle HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"Authorization: Bearer {a.token}\r\n\r\n").encode()
    gate = asyncio.Semaphore(256)
    conns, failures = [], 0

    async def open_one():
        nonlocal failures
        async with gate:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", a.port), 10)
                w.write(req)
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                if m:
                    await asyncio.wait_for(r.readexactly(int(m.group(1))), 10)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures += 1
                conns.append(w)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                failures += 1

    before = rss_kib(pids)
    started = time.time()
    await asyncio.gather(*(open_one() for _ in range(a.n)))
    opened = time.time() - started
    await asyncio.sleep(a.hold)
    with_open = rss_kib(pids)
    for w in conns:
        w.close()
    await asyncio.sleep(a.settle)
    after = rss_kib(pids)
    print(json.dumps({
        "connections": len(conns), "failures": failures, "open_secs": round(opened, 2),
        "rss_before_kib": before, "rss_open_kib": with_open, "rss_closed_kib": after,
    }))


def cmd_idle(a):
    asyncio.run(asyncio.wait_for(idle_client(a), 120))


# ---------------------------------------------------------------- report

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_h2load(text, out):
    """h2load's summary: rate, requests done and failed, status codes."""
    m = re.search(r"^finished in ([\d.]+)s, ([\d.]+) req/s", text, re.M)
    if m:
        out["secs"], out["rps"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"^requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text, re.M)
    if m:
        out["requests"] = int(m.group(1))
        out["errors"] = sum(int(x) for x in m.groups()[1:])
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if m:
        out["non2xx"] = sum(int(x) for x in m.groups()[1:])
    m = re.search(r"^time for request:\s+\S+\s+(\S+)\s+(\S+)", text, re.M)
    if m:
        out["max"], out["mean"] = ms(m.group(1)), ms(m.group(2))
    return out


def parse_wrk(path):
    text = open(path).read()
    out = {"rps": 0.0, "p50": None, "p99": None, "non2xx": 0, "errors": 0, "requests": 0}
    if re.search(r"^finished in ", text, re.M):
        parse_h2load(text, out)
        return cpu_per_request(text, out)
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            out[key] = ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"(\d+) requests in ([\d.]+)(m|s)", text)
    if m:
        out["requests"] = int(m.group(1))
        out["secs"] = float(m.group(2)) * (60 if m.group(3) == "m" else 1)
    return cpu_per_request(text, out)


def cpu_per_request(text, out):
    for key, value in re.findall(r"^bench: (\w+)=(\d+)", text, re.M):
        out[key] = out.get(key, 0) + int(value)
    if out.get("clk_tck") and out["requests"]:
        out["cpu_us"] = out["cpu_ticks"] / out["clk_tck"] * 1e6 / out["requests"]
    return out


def median_of(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


ROWS = [
    ("1", "nginx", "nginx plain proxy (no auth)"),
    ("1", "haproxy", "HAProxy 2.6 jwt_verify HS256"),
    ("1", "hyper-floor", "hyper server → hyper client, nothing else (bench/floor.rs)"),
    ("1", "raw-floor", "tokio + httparse, no hyper, nothing else (bench/floor_raw.rs)"),
    ("1", "authgate", "authgate HS256 Bearer"),
    ("1", "authgate-before", "authgate HS256 Bearer, BENCH_BEFORE binary"),
    ("1", "authgate-logs", "authgate HS256 Bearer, access log as a tracing event (RUST_LOG=info)"),
    ("1", "authgate-logfile", "authgate HS256 Bearer, [access_log] JSON lines to a file"),
    ("1", "authgate-logstdout", "authgate HS256 Bearer, [access_log] to stdout, piped to a file"),
    ("1", "nginx-log", "nginx plain proxy, JSON access log (buffer=64k)"),
    ("1", "authgate-assert", "authgate HS256 Bearer, signed identity assertion on"),
    ("2", "authgate-cookie", "authgate HS256 access cookie"),
    ("3", "authgate-es256", "authgate ES256 Bearer"),
    ("3", "authgate-eddsa", "authgate EdDSA Bearer"),
    ("4", "authgate-refresh", "authgate silent refresh (Redis)"),
    ("8", "nginx-tls-hs", "nginx TLS proxy, a full handshake a request"),
    ("8", "haproxy-tls-hs", "HAProxy TLS + jwt_verify, a full handshake a request"),
    ("8", "authgate-tls-hs", "authgate TLS Bearer, a full handshake a request"),
    ("8", "authgate-tls-before-hs", "authgate TLS, BENCH_BEFORE binary"),
    ("8", "nginx-tls-hs-p256", "nginx, client offers only P-256 (no X25519)"),
    ("8", "authgate-tls-hs-p256", "authgate, client offers only P-256 (no X25519)"),
    ("9", "nginx-tls-ka", "nginx TLS proxy, keep-alive HTTP/1.1"),
    ("9", "haproxy-tls-ka", "HAProxy TLS + jwt_verify, keep-alive HTTP/1.1"),
    ("9", "hyper-floor-tls-ka", "rustls + hyper server → hyper client, nothing else (bench/floor.rs)"),
    ("9", "authgate-tls-ka", "authgate TLS Bearer, keep-alive HTTP/1.1"),
    ("9", "authgate-tls-before-ka", "authgate TLS, BENCH_BEFORE binary"),
    ("10", "nginx-tls-h2", "nginx TLS proxy, HTTP/2 (h2load -c10 -m100)"),
    ("10", "haproxy-tls-h2", "HAProxy TLS + jwt_verify, HTTP/2"),
    ("10", "hyper-floor-tls-h2", "rustls + hyper h2 server → hyper-util pooled client, nothing else (bench/floor.rs)"),
    ("10", "authgate-tls-h2", "authgate TLS Bearer, HTTP/2"),
    ("10", "authgate-tls-before-h2", "authgate TLS, BENCH_BEFORE binary"),
]

# The anchors each case's rows are compared with: (nginx, HAProxy).
ANCHORS = {"8": ("nginx-tls-hs", "haproxy-tls-hs"), "9": ("nginx-tls-ka", "haproxy-tls-ka"),
           "10": ("nginx-tls-h2", "haproxy-tls-h2")}


def spread(runs, key, digits=0):
    values = [r[key] for r in runs if r.get(key) is not None]
    if len(values) < 2:
        return ""
    return f" ({min(values):.{digits}f}–{max(values):.{digits}f})"


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


# Ratios taken round by round (each round runs every target back to back,
# so a burst of the host's steal hits both sides of a ratio alike): the
# subject, its anchor, the measure, the target's factor (None: shown only).
PAIRED = [
    ("1", "authgate", "nginx", "cpu", "≤ 1.20"),
    ("1", "authgate", "hyper-floor", "cpu", "≤ 1.30"),
    ("1", "authgate", "haproxy", "rps", "≥ 1.25"),
    ("1", "authgate-logfile", "authgate", "rps", "≥ 0.92"),
    ("1", "authgate-logstdout", "authgate", "rps", "≥ 0.92"),
    ("2", "authgate-cookie", "authgate", "rps", "≥ 0.95"),
    ("8", "authgate-tls-hs", "nginx-tls-hs", "handshakes", "≥ 2.0"),
    ("8", "authgate-tls-hs", "haproxy-tls-hs", "handshakes", "≥ 1.5"),
    ("9", "authgate-tls-ka", "nginx-tls-ka", "rps", "≥ 1.1"),
    ("9", "authgate-tls-ka", "haproxy-tls-ka", "rps", "≥ 1.5"),
    ("9", "hyper-floor-tls-ka", "haproxy-tls-ka", "rps", None),
    ("9", "authgate-tls-ka", "hyper-floor-tls-ka", "rps", None),
    ("10", "authgate-tls-h2", "nginx-tls-h2", "rps", "≥ 1.5"),
    ("10", "authgate-tls-h2", "haproxy-tls-h2", "rps", "≥ 1.3"),
    ("10", "hyper-floor-tls-h2", "haproxy-tls-h2", "rps", None),
    ("10", "authgate-tls-h2", "hyper-floor-tls-h2", "rps", None),
]


def rounds_of(raw, key):
    """A target's runs by round number (`KEY.rN.txt`)."""
    out = {}
    for path in glob.glob(os.path.join(raw, f"{key}.r*.txt")):
        m = re.search(r"\.r(\d+)\.txt$", path)
        if m:
            out[int(m.group(1))] = parse_wrk(path)
    return out


def paired_table(rounds_by):
    """The PAIRED ratios, one per round, as their median and spread;
    `rounds_by` holds each target's runs by round number."""
    lines = ["| case | ratio | measure | target | median of the rounds (lowest–highest) | rounds |",
             "|---|---|---|---|---:|---:|"]
    value = {"rps": lambda r: r["rps"] or None,
             "cpu": lambda r: r.get("cpu_us"),
             "handshakes": lambda r: 1e6 / r["cpu_us"] if r.get("cpu_us") else None}
    for case, subject, anchor, measure, target in PAIRED:
        a, b = rounds_by.get(subject, {}), rounds_by.get(anchor, {})
        ratios = []
        for n in sorted(set(a) & set(b)):
            x, y = value[measure](a[n]), value[measure](b[n])
            if x and y:
                ratios.append(x / y)
        if not ratios:
            continue
        what = {"rps": "req/s", "cpu": "CPU a request", "handshakes": "handshakes a core"}[measure]
        lines.append(f"| {case} | {subject} ÷ {anchor} | {what} | {target or '-'} | "
                     f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | {len(ratios)} |")
    return lines if len(lines) > 2 else []


def cmd_report(a):
    raw = os.path.join(a.dir, "raw")
    med = {}
    runs_by = {}
    rounds_by = {}
    for _, key, _ in ROWS:
        rounds = rounds_of(raw, key)
        if not rounds:
            continue
        rounds_by[key] = rounds
        runs = [rounds[n] for n in sorted(rounds)]
        runs_by[key] = runs
        med[key] = {k: median_of(runs, k) for k in ("rps", "p50", "p99", "cpu_us")}
        med[key]["bad"] = sum(r["non2xx"] + r["errors"] for r in runs)
        med[key]["rounds"] = len(runs)
    lines = []
    w = lines.append
    get = lambda key, field="rps": med.get(key, {}).get(field)
    case1 = get("authgate")
    w("| case | target | req/s (rounds) | CPU µs/request (rounds) | p50 ms | p99 ms | × nginx req/s | × nginx CPU | × HAProxy req/s | × case 1 | non-2xx + errors |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case, key, label in ROWS:
        skip = os.path.join(raw, f"{key}.skip")
        if key not in med:
            if os.path.exists(skip):
                w(f"| {case} | {label} | left out: {open(skip).read().strip()[:120]} | | | | | | | | |")
            continue
        m = med[key]
        runs = runs_by[key]
        ng, hp = ANCHORS.get(case, ("nginx", "haproxy"))
        ratio = lambda v, base: fmt(v / base) if v and base else "-"
        w(f"| {case} | {label} | {m['rps']:.0f}{spread(runs, 'rps')} | "
          f"{fmt(m['cpu_us'], 1)}{spread(runs, 'cpu_us', 1)} | {fmt(m['p50'])} | {fmt(m['p99'])} | "
          f"{ratio(m['rps'], get(ng))} | {ratio(m['cpu_us'], get(ng, 'cpu_us'))} | "
          f"{ratio(m['rps'], get(hp))} | "
          f"{ratio(m['rps'], case1) if key.startswith('authgate') and int(case) <= 4 else '-'} | {m['bad']} |")
    refresh_runs = runs_by.get("authgate-refresh", [])
    if refresh_runs:
        fails = sum(r.get("failures", 0) for r in refresh_runs)
        rotated = sum(r.get("rotated", 0) for r in refresh_runs)
        w("")
        w(f"Case 4: {rotated} silent refreshes answered with a new cookie pair, "
          f"{fails} failed (status other than 200, or no new refresh cookie).")
    extra = {}
    hap = get("haproxy")
    for name in ("storm", "idle", "stream", "flood"):
        path = os.path.join(a.dir, f"{name}.json")
        if os.path.exists(path):
            extra[name] = json.load(open(path))
    targets = []
    if "storm" in extra:
        s = extra["storm"]
        quiet, storm, login = parse_wrk(s["quiet"]), parse_wrk(s["during"]), parse_wrk(s["logins"])
        w("")
        w("Case 5, login storm (64 clients, bcrypt cost 12) while case 1 runs:")
        w("")
        w("| | req/s | p50 ms | p99 ms |")
        w("|---|---:|---:|---:|")
        w(f"| case 1 quiet | {quiet['rps']:.0f} | {fmt(quiet['p50'])} | {fmt(quiet['p99'])} |")
        w(f"| case 1 during the storm | {storm['rps']:.0f} | {fmt(storm['p50'])} | {fmt(storm['p99'])} |")
        secs = login.get("secs") or 1
        w("")
        w(f"Logins: {login['requests']} in {secs:.1f} s ({login['requests'] / secs:.1f}/s), "
          f"{login['non2xx']} non-2xx, {login['errors']} socket errors/timeouts; "
          f"case-1 p99 during/quiet = {fmt(storm['p99'] / quiet['p99'] if quiet['p99'] else None)}.")
        targets.append(("5: p99 during storm ≤ 2 × quiet, no login failing",
                        quiet["p99"] and storm["p99"] <= 2 * quiet["p99"]
                        and login["non2xx"] == 0 and login["errors"] == 0 and login["requests"] > 0))
    if "idle" in extra:
        w("")
        w("Case 6, 10,000 idle keep-alive connections (RSS in MiB):")
        w("")
        w("| target | before | 10k open | growth | per connection | after close | failures |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        growth = {}
        for key, r in extra["idle"].items():
            g = (r["rss_open_kib"] - r["rss_before_kib"]) / 1024
            growth[key] = g
            per = (r["rss_open_kib"] - r["rss_before_kib"]) / max(r["connections"], 1)
            w(f"| {key} | {r['rss_before_kib'] / 1024:.1f} | {r['rss_open_kib'] / 1024:.1f} | "
              f"{g:.1f} | {per:.2f} KiB | {r['rss_closed_kib'] / 1024:.1f} | {r['failures']} |")
        if "authgate" in growth and "nginx" in growth:
            targets.append(("6: growth ≤ 3 × nginx and ≤ 64 MiB",
                            growth["authgate"] <= 3 * max(growth["nginx"], 0.1)
                            and growth["authgate"] <= 64))
    if "stream" in extra:
        w("")
        w("Case 7, 1 GiB streamed through one core (MB/s = 10^6 bytes/s, median of the rounds; highest peak RSS during a transfer):")
        w("")
        w("| target | down MB/s | up MB/s | RSS before MiB | peak RSS down MiB | peak RSS up MiB |")
        w("|---|---:|---:|---:|---:|---:|")
        st = extra["stream"]
        for key, r in st.items():
            w(f"| {key} | {r['down_mbs']:.0f} | {r['up_mbs']:.0f} | {r['base_kib'] / 1024:.1f} | "
              f"{r['down_peak_kib'] / 1024:.1f} | {r['up_peak_kib'] / 1024:.1f} |")
        if "authgate" in st and "haproxy" in st:
            targets.append(("7: ≥ 1.0 × HAProxy down and up",
                            st["authgate"]["down_mbs"] >= st["haproxy"]["down_mbs"]
                            and st["authgate"]["up_mbs"] >= st["haproxy"]["up_mbs"]))
    if "flood" in extra:
        f = extra["flood"]
        quiet, during, flood = parse_wrk(f["quiet"]), parse_wrk(f["during"]), parse_wrk(f["flood"])
        samples = [int(x) for x in open(f["rss_samples"]).read().split()] or [0]
        w("")
        w(f"Flood: {f['rate']} new TLS connections a second offered for {f['secs']} s (h2load --rate, one "
          f"request each; twice what one core takes at case 8's CPU per handshake), {flood['requests']} answered in {fmt(flood.get('secs'), 1)} s "
          f"({flood['requests'] / (flood.get('secs') or 1):.0f}/s), {flood['errors']} failed or timed out. "
          f"Case 9's client (10 keep-alive connections) beside it:")
        w("")
        w("| | req/s | p50 ms | p99 ms | errors |")
        w("|---|---:|---:|---:|---:|")
        w(f"| quiet | {quiet['rps']:.0f} | {fmt(quiet['p50'])} | {fmt(quiet['p99'])} | {quiet['errors'] + quiet['non2xx']} |")
        w(f"| during the flood | {during['rps']:.0f} | {fmt(during['p50'])} | {fmt(during['p99'])} | {during['errors'] + during['non2xx']} |")
        w("")
        w(f"authgate's RSS: {f['rss_before_kib'] / 1024:.1f} MiB before, at most {max(samples) / 1024:.1f} MiB "
          f"during (sampled every 0.5 s), {f['rss_after_kib'] / 1024:.1f} MiB 3 s after.")
        targets.append(("8 flood: established connections served (no errors), RSS back within 16 MiB after",
                        during["rps"] > 0 and during["errors"] + during["non2xx"] == 0
                        and f["rss_after_kib"] <= f["rss_before_kib"] + 16 * 1024))
    ag = med.get("authgate")
    nginx, floor = med.get("nginx"), med.get("hyper-floor")
    if ag and nginx and floor and hap and ag.get("cpu_us"):
        targets.insert(0, ("1: CPU/request ≤ 1.20 × nginx and ≤ 1.30 × hyper's floor, ≥ 1.25 × HAProxy req/s, "
                           "p99 ≤ 1.25 × nginx's",
                           ag["cpu_us"] <= 1.20 * nginx["cpu_us"] and ag["cpu_us"] <= 1.30 * floor["cpu_us"]
                           and ag["rps"] >= 1.25 * hap and ag["p99"] <= 1.25 * nginx["p99"]))
    if ag:
        for key, what in (("authgate-logfile", "to a file"), ("authgate-logstdout", "to stdout")):
            if key in med:
                targets.append((f"1: access log {what} ≥ 0.92 × case 1", med[key]["rps"] >= 0.92 * ag["rps"]))
    # Case 8 by what one core can take (1 / CPU per handshake): the load
    # generator's own handshakes (it verifies each server's signature) keep
    # its core busier than the server's, so req/s measures the client.
    for case, factors, field in (("8", (2.0, 1.5), "cpu_us"), ("9", (1.1, 1.5), "rps"),
                                 ("10", (1.5, 1.3), "rps")):
        ng, hp = ANCHORS[case]
        key = {"8": "authgate-tls-hs", "9": "authgate-tls-ka", "10": "authgate-tls-h2"}[case]
        if key in med and ng in med and hp in med and all(med[k][field] for k in (key, ng, hp)):
            rate = (lambda k: 1e6 / med[k][field]) if field == "cpu_us" else (lambda k: med[k][field])
            what = "handshakes/s of one core (1 / CPU per handshake)" if field == "cpu_us" else "req/s"
            floor = {"9": "hyper-floor-tls-ka", "10": "hyper-floor-tls-h2"}.get(case)
            beside = ""
            if floor in med and med[floor][field]:
                # What hyper and rustls alone reach against the same anchors.
                beside = (f" (hyper + rustls alone: {rate(floor) / rate(ng):.2f} × and "
                          f"{rate(floor) / rate(hp):.2f} ×; authgate's CPU a request "
                          f"{med[key]['cpu_us'] / med[floor]['cpu_us']:.2f} × theirs)")
            targets.append((f"{case}: ≥ {factors[0]} × nginx, ≥ {factors[1]} × HAProxy in {what}: "
                            f"{rate(key) / rate(ng):.2f} × and {rate(key) / rate(hp):.2f} ×{beside}",
                            rate(key) >= factors[0] * rate(ng) and rate(key) >= factors[1] * rate(hp)))
    if ag and "authgate-cookie" in med:
        targets.insert(1, ("2: cookie within 5 % of case 1",
                           med["authgate-cookie"]["rps"] >= 0.95 * ag["rps"]))
    if ag and "authgate-es256" in med and "authgate-eddsa" in med:
        targets.insert(2, ("3: ES256 and EdDSA ≥ 0.9 × case 1",
                           min(med["authgate-es256"]["rps"], med["authgate-eddsa"]["rps"])
                           >= 0.9 * ag["rps"]))
    if ag and "authgate-refresh" in med:
        fails = sum(r.get("failures", 0) + r["non2xx"] + r["errors"]
                    for r in runs_by["authgate-refresh"])
        targets.insert(3, ("4: silent refresh ≥ 0.33 × case 1, none failing",
                           med["authgate-refresh"]["rps"] >= 0.33 * ag["rps"] and fails == 0))
    paired = paired_table(rounds_by)
    if paired:
        w("")
        w("Paired by round (each ratio taken within one round, then the median over the rounds; "
          "steadier than a ratio of medians when the host steals CPU in bursts):")
        w("")
        for line in paired:
            w(line)
    w("")
    w("Targets (this run):")
    w("")
    for name, ok in targets:
        w(f"- {'met' if ok else 'NOT met'}: case {name}")
    print("\n".join(lines))


def cmd_capacity(a):
    """Requests a second one core would serve at the median CPU per request."""
    runs = [parse_wrk(p) for p in glob.glob(os.path.join(a.dir, "raw", f"{a.target}.r*.txt"))]
    cpu = median_of(runs, "cpu_us")
    print(f"{1e6 / cpu if cpu else 1000:.0f}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("mint")
    s.add_argument("--secret", required=True)
    s.add_argument("--sub", default="bench")
    s.add_argument("--exp-in", type=int, default=7200)
    s.set_defaults(f=cmd_mint)
    for name, f in (("login", cmd_login), ("seeds", cmd_seeds)):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--user", required=True)
        s.add_argument("--password", required=True)
        s.add_argument("--n", type=int, default=1)
        s.add_argument("--out")
        s.set_defaults(f=f)
    s = sub.add_parser("rss")
    s.add_argument("--pids", required=True)
    s.add_argument("--peak", action="store_true")
    s.set_defaults(f=cmd_rss)
    s = sub.add_parser("idle")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--pids", required=True)
    s.add_argument("--token", required=True)
    s.add_argument("--n", type=int, default=10000)
    s.add_argument("--hold", type=float, default=3)
    s.add_argument("--settle", type=float, default=3)
    s.set_defaults(f=cmd_idle)
    s = sub.add_parser("capacity")
    s.add_argument("--dir", required=True)
    s.add_argument("--target", required=True)
    s.set_defaults(f=cmd_capacity)
    s = sub.add_parser("report")
    s.add_argument("--dir", required=True)
    s.set_defaults(f=cmd_report)
    a = p.parse_args()
    a.f(a)


if __name__ == "__main__":
    main()
