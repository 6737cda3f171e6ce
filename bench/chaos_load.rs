//! The load of bench/chaos.sh and bench/soak.sh: a steady mix of what
//! authgate's clients do, from one thread, judging every answer against
//! what it must be (see docs/reliability.md).
//!
//! - Bearer GETs with tokens it mints itself with the HS256 secret: valid
//!   ones (must pass), and expired, tampered and foreign-key ones (must be
//!   refused);
//! - browser-like cookie sessions whose access tokens expire every few
//!   seconds (`[jwt] access_ttl`), so they refresh silently all the time,
//!   some with three parallel requests on one session; every accepted
//!   refresh is recorded, and two different successors accepted for one
//!   refresh token are a fork;
//! - logins with right and wrong passwords, and logouts;
//! - four slow requests (the upstream takes 500 ms) always in flight, which
//!   an instance told to drain must finish.
//!
//! The script tells it the phases: each line appended to `--phases` is
//! `NAME fault|ok DEPENDENCY` (`-` for none). A `fault` line opens a fault
//! window; the `ok` line that follows names the dependency that is back,
//! and the time to the first good answer needing it is the recovery.
//!
//! Modes:
//! - `bench-chaos-load load --url URL ...`: the mixed load, a table at the
//!   end (`--out`), exit status 1 when a zero-count is not zero or a target
//!   is missed;
//! - `bench-chaos-load websockets --url URL --redis-url URL --count N`: N
//!   open WebSockets on cookie sessions, and the Redis commands per second
//!   they cause (INFO commandstats deltas);
//! - `bench-chaos-load upstream ADDR`: an upstream answering `200 ok` and
//!   accepting WebSocket upgrades (holding them open).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Load(LoadArgs),
    Websockets(WsArgs),
    Upstream { addr: String },
}

#[derive(Parser, Clone)]
struct LoadArgs {
    /// Where clients send requests: the front proxy, or authgate itself.
    #[arg(long)]
    url: String,
    /// How long to run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "90s")]
    duration: Duration,
    /// Phase lines appended by the script (see the module doc).
    #[arg(long)]
    phases: Option<PathBuf>,
    /// The markdown table is written here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Every 10 s a line `SECONDS REQUESTS P50_MS P99_MS` (the soak's samples).
    #[arg(long)]
    intervals: Option<PathBuf>,
    /// Environment variable holding the HS256 secret authgate signs with.
    #[arg(long, default_value = "AUTHGATE_JWT_SECRET")]
    secret_env: String,
    /// Users `user0..N` with password `pw-userI` exist; `mallory0..9` get
    /// wrong passwords.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Cookie sessions kept open at once.
    #[arg(long, default_value_t = 24)]
    sessions: usize,
    /// Scales every request rate.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Target: first good answer after a dependency is back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    recovery_target: Duration,
    /// `[sessions] timeout`: a hung Redis must give 503 within it.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    session_timeout: Duration,
}

#[derive(Parser, Clone)]
struct WsArgs {
    /// authgate itself (not the front).
    #[arg(long)]
    url: String,
    #[arg(long)]
    redis_url: String,
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Sessions the sockets are spread over.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// How long the Redis commands are counted, with every socket open.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    window: Duration,
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Not longer: a client that waits this long counts the request as hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Scheduling room on top of `[sessions] timeout` for the hung-Redis 503.
const HANG_SLACK: Duration = Duration::from_millis(250);
/// How long the upstream takes over `/slow/...`.
const SLOW_UPSTREAM: Duration = Duration::from_millis(500);
/// Lineage records older than this are dropped (far past `reuse_grace`).
const LINEAGE_KEEP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    BearerValid,
    /// A valid Bearer GET the upstream answers slowly: judged, left out
    /// of the latencies.
    Slow,
    BearerExpired,
    BearerTampered,
    BearerForeign,
    Cookie,
    LoginGood,
    LoginBad,
    Logout,
}

impl Kind {
    fn must_refuse(self) -> bool {
        matches!(
            self,
            Kind::BearerExpired | Kind::BearerTampered | Kind::BearerForeign | Kind::LoginBad
        )
    }
}

#[derive(Default)]
struct Phase {
    name: String,
    fault: bool,
    /// The dependency an `ok` phase follows the return of.
    dep: Option<String>,
    started: Option<Instant>,
    ended: Option<Instant>,
    statuses: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
    wrong: u64,
    lost: u64,
    forks: u64,
    dropped: u64,
    hung: u64,
    recovery: Option<Duration>,
    /// Slowest 503 of a request that needed the hung Redis.
    slowest_503: Option<Duration>,
    examples: Vec<String>,
}

struct Session {
    access: String,
    refresh: String,
    created: Instant,
    last_refresh: Option<Instant>,
    alive: bool,
}

#[derive(Default)]
struct State {
    phases: Vec<Phase>,
    sessions: Vec<Session>,
    next_session: usize,
    /// Refresh token → the successor accepted for it, and when.
    lineage: HashMap<String, (String, Instant)>,
    interval_requests: u64,
    interval_latencies_us: Vec<u32>,
}

impl State {
    fn fault_at(&self, at: Instant) -> bool {
        self.phases
            .iter()
            .rev()
            .find(|p| p.started.is_some_and(|s| s <= at))
            .is_some_and(|p| p.fault)
    }
}

type Shared = Arc<Mutex<State>>;
type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Ctx {
    url: String,
    client: HttpClient,
    state: Shared,
    secret: String,
    args: LoadArgs,
}

struct Answer {
    status: Option<StatusCode>,
    hung: bool,
    set_cookies: Vec<String>,
    took: Duration,
}

impl Ctx {
    async fn send(&self, request: Request<Full<Bytes>>) -> Answer {
        let started = Instant::now();
        let sent = tokio::time::timeout(CLIENT_TIMEOUT, async {
            let response: Response<Incoming> = self.client.request(request).await?;
            let status = response.status();
            let set_cookies = response
                .headers()
                .get_all(SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect::<Vec<_>>();
            // Read to the end: the connection goes back to the pool.
            let _ = response.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>((status, set_cookies))
        })
        .await;
        let took = started.elapsed();
        match sent {
            Ok(Ok((status, set_cookies))) => Answer {
                status: Some(status),
                hung: false,
                set_cookies,
                took,
            },
            Ok(Err(_)) => Answer {
                status: None,
                hung: false,
                set_cookies: Vec::new(),
                took,
            },
            Err(_) => Answer {
                status: None,
                hung: true,
                set_cookies: Vec::new(),
                took,
            },
        }
    }

    fn get(&self, path: &str) -> http::request::Builder {
        Request::get(format!("{}{path}", self.url))
    }

    fn form(&self, path: &str, fields: &[(&str, &str)]) -> Request<Full<Bytes>> {
        let body = serde_urlencoded::to_string(fields).expect("form");
        Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.url))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .expect("request")
    }

    /// Books one answer in the phase it started in, and judges it.
    /// `needs`: the dependencies a good answer proves are back.
    fn record(&self, kind: Kind, started: Instant, answer: &Answer, needs: &[&str]) {
        let mut state = self.state.lock().unwrap();
        let fault = state.fault_at(started) || state.fault_at(Instant::now());
        let phase_index = state
            .phases
            .iter()
            .rposition(|p| p.started.is_some_and(|s| s <= started))
            .unwrap_or(0);
        let latency = (kind != Kind::Slow).then_some(answer.took.as_micros() as u32);
        state.interval_requests += 1;
        state.interval_latencies_us.extend(latency);
        let phase = &mut state.phases[phase_index];
        let label = match (answer.status, answer.hung) {
            (Some(s), _) => s.as_u16().to_string(),
            (None, true) => "hung".to_string(),
            (None, false) => "error".to_string(),
        };
        *phase.statuses.entry(label.clone()).or_default() += 1;
        phase.latencies_us.extend(latency);
        let status = answer.status.map(|s| s.as_u16()).unwrap_or(0);
        let ok = (200..300).contains(&status);
        let mut wrong = None;
        if kind.must_refuse() && ok {
            wrong = Some(format!("{kind:?} got {status}"));
        } else if !kind.must_refuse() && (status == 401 || status == 403) && !fault {
            wrong = Some(format!("{kind:?} got {status} outside a fault window"));
        }
        if let Some(w) = wrong {
            phase.wrong += 1;
            if phase.examples.len() < 5 {
                phase.examples.push(w);
            }
        }
        if answer.hung {
            phase.hung += 1;
        }
        if phase.name.starts_with("drain")
            && (answer.status.is_none() || status == 502 || status == 504)
        {
            phase.dropped += 1;
        }
        if phase.fault
            && phase.dep.as_deref() == Some("redis")
            && phase.name.contains("pause")
            && status == 503
            && !needs.is_empty()
        {
            phase.slowest_503 = Some(phase.slowest_503.unwrap_or_default().max(answer.took));
        }
        // Recovery: the first good answer, in the phase after a fault,
        // that needed the dependency which came back.
        let phase = &mut state.phases[phase_index];
        if ok && !phase.fault && phase.recovery.is_none() {
            if let (Some(dep), Some(phase_start)) = (phase.dep.as_deref(), phase.started) {
                if needs.contains(&dep) && started >= phase_start {
                    phase.recovery = Some(Instant::now() - phase_start);
                }
            }
        }
    }

    /// A successor accepted for `presented`: a different one accepted
    /// before is a fork.
    fn accepted(&self, started: Instant, presented: &str, successor: &str) {
        let mut state = self.state.lock().unwrap();
        let forked = match state.lineage.get(presented) {
            Some((known, _)) => known != successor,
            None => {
                state
                    .lineage
                    .insert(presented.to_string(), (successor.to_string(), started));
                false
            }
        };
        if forked {
            let index = state
                .phases
                .iter()
                .rposition(|p| p.started.is_some_and(|s| s <= started))
                .unwrap_or(0);
            state.phases[index].forks += 1;
        }
    }

    fn lost(&self, started: Instant) {
        let mut state = self.state.lock().unwrap();
        let index = state
            .phases
            .iter()
            .rposition(|p| p.started.is_some_and(|s| s <= started))
            .unwrap_or(0);
        state.phases[index].lost += 1;
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn mint(secret: &str, sub: &str, exp: u64) -> String {
    let now = unix_now();
    let claims = serde_json::json!({
        "sub": sub, "iat": now, "nbf": now.saturating_sub(1), "exp": exp,
        "iss": "authgate", "jti": format!("{:032x}", rand::random::<u128>()),
        "roles": ["user"],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing")
}

/// One character of the signature changed: a token that must not verify.
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len() - 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

fn cookie_value(set_cookies: &[String], name: &str) -> Option<String> {
    set_cookies.iter().find_map(|c| {
        let (n, v) = c.split(';').next()?.split_once('=')?;
        (n.trim() == name && !v.is_empty()).then(|| v.to_string())
    })
}

fn every(base_ms: f64, rate: f64) -> tokio::time::Interval {
    let mut interval =
        tokio::time::interval(Duration::from_micros((base_ms * 1000.0 / rate) as u64));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Always one slow request in flight: a drain must let it finish.
async fn slow_worker(ctx: Arc<Ctx>, n: usize) {
    // Paced too: with the upstream down the answers come at once.
    let mut tick = every(50.0, ctx.args.rate);
    for i in 0usize.. {
        tick.tick().await;
        let user = format!("user{}", (i + n) % ctx.args.users);
        let token = mint(&ctx.secret, &user, unix_now() + 2);
        let request = ctx
            .get(&format!("/slow/{i}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let started = Instant::now();
        let answer = ctx.send(request).await;
        ctx.record(Kind::Slow, started, &answer, &["upstream"]);
    }
}

async fn bearer_worker(ctx: Arc<Ctx>, n: usize) {
    let mut tick = every(25.0, ctx.args.rate);
    let foreign = "another-key-that-authgate-does-not-know-0123456789";
    for i in 0usize.. {
        tick.tick().await;
        let user = format!("user{}", (i + n) % ctx.args.users);
        let (kind, token) = match i % 10 {
            0 => (
                Kind::BearerExpired,
                mint(&ctx.secret, &user, unix_now() - 30),
            ),
            1 => (
                Kind::BearerTampered,
                tampered(&mint(&ctx.secret, &user, unix_now() + 2)),
            ),
            2 => (Kind::BearerForeign, mint(foreign, &user, unix_now() + 2)),
            _ => (Kind::BearerValid, mint(&ctx.secret, &user, unix_now() + 2)),
        };
        let request = ctx
            .get(&format!("/api/{i}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let started = Instant::now();
        let answer = ctx.send(request).await;
        ctx.record(kind, started, &answer, &["upstream"]);
    }
}

/// Logs `user` in; the session's cookies, or `None` when refused.
async fn login(ctx: &Ctx, user: &str) -> Option<(String, String)> {
    let password = format!("pw-{user}");
    let request = ctx.form("/token", &[("username", user), ("password", &password)]);
    let started = Instant::now();
    let answer = ctx.send(request).await;
    ctx.record(Kind::LoginGood, started, &answer, &["redis", "postgres"]);
    if answer.status != Some(StatusCode::OK) {
        return None;
    }
    Some((
        cookie_value(&answer.set_cookies, "access_token")?,
        cookie_value(&answer.set_cookies, "refresh_token")?,
    ))
}

/// One cookie GET on session `index`, as a browser sends it.
async fn cookie_get(ctx: Arc<Ctx>, index: usize, access: String, refresh: String) {
    let request = ctx
        .get(&format!("/app/{index}"))
        .header(
            COOKIE,
            format!("theme=dark; access_token={access}; refresh_token={refresh}"),
        )
        .body(Full::new(Bytes::new()))
        .expect("request");
    let started = Instant::now();
    let answer = ctx.send(request).await;
    let successor = cookie_value(&answer.set_cookies, "refresh_token");
    let new_access = cookie_value(&answer.set_cookies, "access_token");
    let ok = answer.status.is_some_and(|s| s.is_success());
    // Only a refresh needs the stores; a still valid access cookie does not.
    let needs: &[&str] = if successor.is_some() {
        &["redis", "postgres", "upstream"]
    } else {
        &["upstream"]
    };
    ctx.record(Kind::Cookie, started, &answer, needs);
    if let (true, Some(successor), Some(new_access)) = (ok, successor, new_access) {
        ctx.accepted(started, &refresh, &successor);
        let mut state = ctx.state.lock().unwrap();
        let session = &mut state.sessions[index];
        if session.refresh == refresh {
            session.refresh = successor;
            session.access = new_access;
        }
        session.last_refresh = Some(Instant::now());
    } else if answer.status == Some(StatusCode::UNAUTHORIZED) {
        // Our sessions never replay a token past the grace: a refused one
        // was live, and is lost.
        ctx.lost(started);
        ctx.state.lock().unwrap().sessions[index].alive = false;
    }
}

async fn cookie_worker(ctx: Arc<Ctx>) {
    let mut tick = every(25.0, ctx.args.rate);
    for i in 0usize.. {
        tick.tick().await;
        let picked = {
            let mut state = ctx.state.lock().unwrap();
            let len = state.sessions.len();
            (0..len).find_map(|_| {
                let index = state.next_session % len.max(1);
                state.next_session += 1;
                let s = &state.sessions[index];
                s.alive
                    .then(|| (index, s.access.clone(), s.refresh.clone()))
            })
        };
        let Some((index, access, refresh)) = picked else {
            continue;
        };
        if i % 5 == 0 {
            // A page that loads three resources at once.
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..3 {
                set.spawn(cookie_get(
                    ctx.clone(),
                    index,
                    access.clone(),
                    refresh.clone(),
                ));
            }
            set.join_all().await;
        } else {
            cookie_get(ctx.clone(), index, access, refresh).await;
        }
    }
}

/// Keeps `--sessions` sessions open: logs in for every slot that was
/// logged out or lost; logs one out every second; a wrong password twice
/// a second.
async fn session_worker(ctx: Arc<Ctx>) {
    let mut tick = every(250.0, ctx.args.rate);
    for i in 0usize.. {
        tick.tick().await;
        let user = format!("user{}", i % ctx.args.users);
        // Fill a free slot, or log in anyway (and drop it) to keep the rate.
        let free = {
            let state = ctx.state.lock().unwrap();
            state.sessions.iter().position(|s| !s.alive)
        };
        if let Some((access, refresh)) = login(&ctx, &user).await {
            let mut state = ctx.state.lock().unwrap();
            let session = Session {
                access,
                refresh,
                created: Instant::now(),
                last_refresh: None,
                alive: true,
            };
            match free {
                Some(slot) => state.sessions[slot] = session,
                None if state.sessions.len() < ctx.args.sessions => state.sessions.push(session),
                None => {}
            }
        }
        if i % 2 == 0 {
            let bad = format!("mallory{}", i % 10);
            let request = ctx.form("/token", &[("username", &bad), ("password", "wrong")]);
            let started = Instant::now();
            let answer = ctx.send(request).await;
            ctx.record(Kind::LoginBad, started, &answer, &[]);
        }
        if i % 4 == 3 {
            let victim = {
                let state = ctx.state.lock().unwrap();
                let len = state.sessions.len();
                (len == ctx.args.sessions)
                    .then(|| {
                        let index = i % len;
                        let s = &state.sessions[index];
                        s.alive.then(|| (index, s.refresh.clone()))
                    })
                    .flatten()
            };
            if let Some((index, refresh)) = victim {
                let request = ctx.form("/logout", &[("refresh_token", &refresh)]);
                let started = Instant::now();
                let answer = ctx.send(request).await;
                ctx.record(Kind::Logout, started, &answer, &["redis"]);
                if answer.status == Some(StatusCode::NO_CONTENT) {
                    ctx.state.lock().unwrap().sessions[index].alive = false;
                }
            }
        }
    }
}

/// Follows the phase file; closes a phase when the next one starts.
async fn phase_watcher(ctx: Arc<Ctx>) {
    let Some(path) = ctx.args.phases.clone() else {
        return;
    };
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for line in &lines[seen.min(lines.len())..] {
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or("?").to_string();
            let fault = words.next() == Some("fault");
            let dep = words.next().filter(|d| *d != "-").map(str::to_string);
            let mut state = ctx.state.lock().unwrap();
            let now = Instant::now();
            close_phase(&mut state, now);
            state.phases.push(Phase {
                name,
                fault,
                dep,
                started: Some(now),
                ..Phase::default()
            });
        }
        seen = lines.len();
    }
}

/// Ends the current phase. After a fault: every session that was open
/// before the fault and is still open must have refreshed since the
/// dependency came back, or it is lost.
fn close_phase(state: &mut State, now: Instant) {
    let closing = state.phases.len() - 1;
    state.phases[closing].ended = Some(now);
    let phase = &state.phases[closing];
    let (Some(_), Some(back)) = (phase.dep.as_ref(), phase.started) else {
        return;
    };
    if phase.fault || closing == 0 {
        return;
    }
    let fault_start = state.phases[closing - 1].started.unwrap_or(back);
    let stale = state
        .sessions
        .iter()
        .filter(|s| s.alive && s.created < fault_start)
        .filter(|s| s.last_refresh.is_none_or(|at| at < back))
        .count() as u64;
    state.phases[closing].lost += stale;
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

async fn interval_writer(ctx: Arc<Ctx>, begun: Instant) {
    let Some(path) = ctx.args.intervals.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (n, mut lat) = {
            let mut state = ctx.state.lock().unwrap();
            (
                std::mem::take(&mut state.interval_requests),
                std::mem::take(&mut state.interval_latencies_us),
            )
        };
        lat.sort_unstable();
        let line = format!(
            "{} {} {:.2} {:.2}\n",
            begun.elapsed().as_secs(),
            n,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("intervals file");
        let _ = std::io::Write::write_all(&mut file, line.as_bytes());
        // Forget lineage far past the grace: no successor comes for it.
        let mut state = ctx.state.lock().unwrap();
        state
            .lineage
            .retain(|_, (_, at)| at.elapsed() < LINEAGE_KEEP);
    }
}

fn fmt_dur(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// The table, and the list of zero-counts and targets missed.
fn report(state: &mut State, args: &LoadArgs) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut failed = Vec::new();
    out.push_str("| phase | window | requests | by status | p50 ms | p99 ms | wrong | lost | forks | dropped | hung | recovery | hung Redis → 503 |\n");
    out.push_str("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let (mut wrong, mut lost, mut forks, mut dropped, mut hung) = (0, 0, 0, 0, 0);
    for phase in &mut state.phases {
        phase.latencies_us.sort_unstable();
        let statuses = phase
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let window = match (phase.fault, phase.dep.as_deref()) {
            (true, _) => "fault".to_string(),
            (false, Some(dep)) => format!("after ({dep} back)"),
            (false, None) => "steady".to_string(),
        };
        let seconds = match (phase.started, phase.ended) {
            (Some(a), Some(b)) => format!(" ({:.0} s)", (b - a).as_secs_f64()),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| {}{} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            phase.name,
            seconds,
            window,
            phase.statuses.values().sum::<u64>(),
            statuses,
            percentile(&phase.latencies_us, 0.5),
            percentile(&phase.latencies_us, 0.99),
            phase.wrong,
            phase.lost,
            phase.forks,
            phase.dropped,
            phase.hung,
            fmt_dur(phase.recovery),
            fmt_dur(phase.slowest_503),
        );
        wrong += phase.wrong;
        lost += phase.lost;
        forks += phase.forks;
        dropped += phase.dropped;
        hung += phase.hung;
        for example in &phase.examples {
            failed.push(format!("{}: {example}", phase.name));
        }
        if !phase.fault && phase.dep.is_some() {
            match phase.recovery {
                Some(r) if r <= args.recovery_target => {}
                r => failed.push(format!(
                    "{}: recovery {} (target ≤ {:?})",
                    phase.name,
                    fmt_dur(r),
                    args.recovery_target
                )),
            }
        }
        if let Some(slowest) = phase.slowest_503 {
            if slowest > args.session_timeout + HANG_SLACK {
                failed.push(format!(
                    "{}: a request needing the hung Redis took {} to get 503 (target ≤ {:?})",
                    phase.name,
                    fmt_dur(Some(slowest)),
                    args.session_timeout
                ));
            }
        }
    }
    for (name, n) in [
        ("wrong answers", wrong),
        ("lost sessions", lost),
        ("forked sessions", forks),
        ("requests dropped during the drain", dropped),
        ("hung requests", hung),
    ] {
        if n > 0 {
            failed.push(format!("{name}: {n}"));
        }
    }
    (out, failed)
}

async fn run_load(args: LoadArgs) -> i32 {
    let secret = std::env::var(&args.secret_env)
        .unwrap_or_else(|_| panic!("{} must hold the HS256 secret", args.secret_env));
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let state: Shared = Arc::new(Mutex::new(State::default()));
    state.lock().unwrap().phases.push(Phase {
        name: "start".into(),
        started: Some(Instant::now()),
        ..Phase::default()
    });
    let ctx = Arc::new(Ctx {
        url: args.url.trim_end_matches('/').to_string(),
        client,
        state: state.clone(),
        secret,
        args: args.clone(),
    });
    let begun = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(phase_watcher(ctx.clone()));
    tasks.spawn(interval_writer(ctx.clone(), begun));
    tasks.spawn(session_worker(ctx.clone()));
    for n in 0..4 {
        tasks.spawn(bearer_worker(ctx.clone(), n));
        tasks.spawn(cookie_worker(ctx.clone()));
        tasks.spawn(slow_worker(ctx.clone(), n));
    }
    tokio::time::sleep(args.duration).await;
    tasks.abort_all();
    // Requests in flight when the load stops are not judged.
    let mut state = state.lock().unwrap();
    close_phase(&mut state, Instant::now());
    let (table, failed) = report(&mut state, &args);
    let mut text = table;
    if failed.is_empty() {
        text.push_str("\nEvery zero-count is zero and every target is met.\n");
    } else {
        text.push_str("\nMissed:\n");
        for f in &failed {
            let _ = writeln!(text, "- {f}");
        }
    }
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).expect("writing the table");
    }
    i32::from(!failed.is_empty())
}

// ---------------------------------------------------------------- websockets

async fn redis_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    // cmdstat_get:calls=12,usec=...; INFO itself is left out.
    info.lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A socket that authgate answered 101, and the session's cookies when
/// the handshake refreshed them.
type Opened = (tokio::net::TcpStream, Option<(String, String)>);

/// The socket, or why it was not opened (the status line, or what failed).
async fn open_socket(host: &str, access: &str, refresh: &str) -> Result<Opened, String> {
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Cookie: access_token={access}; refresh_token={refresh}\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(0) => return Err("closed before an answer".into()),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(format!("read: {}", e.kind())),
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        let status = String::from_utf8_lossy(&head);
        return Err(status.lines().next().unwrap_or_default().to_string());
    }
    let head = String::from_utf8_lossy(&head);
    let set: Vec<String> = head
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().to_string())
        })
        .collect();
    let renewed = cookie_value(&set, "access_token").zip(cookie_value(&set, "refresh_token"));
    Ok((stream, renewed))
}

async fn run_websockets(args: WsArgs) -> i32 {
    let base = args.url.trim_end_matches('/').to_string();
    let host = base.trim_start_matches("http://").to_string();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut sessions = Vec::new();
    for i in 0..args.sessions {
        let user = format!("user{}", i % args.users);
        let body =
            serde_urlencoded::to_string([("username", &user), ("password", &format!("pw-{user}"))])
                .expect("form");
        let request = Request::post(format!("{base}/token"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = client.request(request).await.expect("login");
        let set: Vec<String> = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if let (Some(a), Some(r)) = (
            cookie_value(&set, "access_token"),
            cookie_value(&set, "refresh_token"),
        ) {
            sessions.push((a, r));
        }
    }
    assert!(!sessions.is_empty(), "no login succeeded");
    let opened_at = Instant::now();
    let mut sockets = Vec::with_capacity(args.count);
    let mut failed = 0;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for chunk in (0..args.count).collect::<Vec<_>>().chunks(200) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let index = i % sessions.len();
            let (a, r) = sessions[index].clone();
            let host = host.clone();
            set.spawn(async move { (index, open_socket(&host, &a, &r).await) });
        }
        // A handshake on an expired access cookie refreshed the session:
        // the next ones carry the successor (one refresh token is never
        // presented past the grace).
        for (index, opened) in set.join_all().await {
            match opened {
                Ok((socket, renewed)) => {
                    sockets.push(socket);
                    if let Some(cookies) = renewed {
                        sessions[index] = cookies;
                    }
                }
                Err(why) => {
                    failed += 1;
                    *reasons.entry(why).or_default() += 1;
                }
            }
        }
    }
    let open_secs = opened_at.elapsed().as_secs_f64();
    let redis = redis::Client::open(args.redis_url.as_str()).expect("redis url");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // Let the opening settle before counting.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = redis_calls(&mut conn).await;
    tokio::time::sleep(args.window).await;
    let after = redis_calls(&mut conn).await;
    let per_second = (after - before) as f64 / args.window.as_secs_f64();
    // Were they all still open? A closed socket reads 0 bytes at once.
    let mut still_open = 0;
    for s in &mut sockets {
        let mut byte = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(1), s.read(&mut byte))
            .await
            .is_err()
        {
            still_open += 1;
        }
    }
    let text = format!(
        "| open WebSockets | refused | opened in | still open after | Redis commands/s (target ≤ 20) |\n\
         |---:|---:|---:|---:|---:|\n\
         | {} | {failed} | {open_secs:.1} s | {still_open} ({:.0} s) | {per_second:.1} |\n",
        sockets.len(),
        args.window.as_secs_f64() + 5.0,
    );
    let mut text = text;
    for (why, n) in &reasons {
        let _ = writeln!(text, "\nNot opened: {n} × {why}");
    }
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).expect("writing the table");
    }
    i32::from(per_second > 20.0 || failed > 0 || still_open < args.count)
}

// ---------------------------------------------------------------- upstream

async fn upstream(addr: String) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                if req.headers().contains_key(http::header::UPGRADE) {
                    // Hold the upgraded connection open, reading and
                    // dropping whatever comes.
                    tokio::spawn(async move {
                        if let Ok(upgraded) = hyper::upgrade::on(&mut req).await {
                            let mut io = TokioIo::new(upgraded);
                            let mut sink = [0u8; 1024];
                            while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
                        }
                    });
                    return Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(StatusCode::SWITCHING_PROTOCOLS)
                            .header("upgrade", "websocket")
                            .header("connection", "upgrade")
                            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                            .body(Empty::<Bytes>::new())
                            .expect("response"),
                    );
                }
                if req.uri().path().starts_with("/slow/") {
                    // Requests in flight when an instance is told to drain.
                    tokio::time::sleep(SLOW_UPSTREAM).await;
                }
                Ok(Response::new(Empty::<Bytes>::new()))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = runtime.block_on(async move {
        match cli.mode {
            Mode::Load(args) => run_load(args).await,
            Mode::Websockets(args) => run_websockets(args).await,
            Mode::Upstream { addr } => {
                upstream(addr).await.expect("upstream");
                0
            }
        }
    });
    std::process::exit(code);
}
