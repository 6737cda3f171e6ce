//! Issue 20: the access log as JSON lines to a file or stdout, written by a
//! thread of its own, so that a slow disk or a full pipe never holds up a
//! request (lines are dropped and counted instead). Real `authgate`
//! processes, as operators run them.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::process::{serve_command, AuthgateProcess};
use support::{client, two_ports, Upstream};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A config with a public route to `upstream`, a required one, metrics on
/// `admin` and `[access_log]` as given.
fn config(port: u16, admin: u16, upstream: &Upstream, access_log: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [[routes]]\nprefix = \"/api\"\nupstream = \"{url}\"\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"{url}\"\nauth = \"public\"\n\
         [users]\npath = \"users.toml\"\nbcrypt_cost = 4\n\
         [access_log]\n{access_log}\n",
        url = upstream.url()
    )
}

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    admin: u16,
    _upstream: Upstream,
}

async fn setup(access_log: &str) -> Setup {
    let upstream = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.toml"), "").unwrap();
    let (port, admin) = two_ports();
    std::fs::write(
        dir.path().join("gateway.toml"),
        config(port, admin, &upstream, access_log),
    )
    .unwrap();
    Setup {
        dir,
        port,
        admin,
        _upstream: upstream,
    }
}

impl Setup {
    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("gateway.toml")
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = client()
            .get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    }
}

/// Two requests: a proxied 200 and a 401 on the required route; their
/// request ids.
async fn two_requests(gw: &AuthgateProcess) -> [String; 2] {
    let ok = client().get(gw.url("/hello?q=1")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let refused = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    [ok, refused].map(|r| r.headers()["x-request-id"].to_str().unwrap().to_string())
}

fn parse(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The lines of `path`, once its text passes `done`.
async fn file_lines(path: &Path, done: impl Fn(&str) -> bool) -> Vec<Value> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return parse(&text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never got the expected lines", path.display());
}

/// The two requests' lines carry today's fields and `time`.
fn assert_lines(lines: &[Value], ids: &[String; 2]) {
    // `/readyz` polls of the start come first.
    let lines: Vec<&Value> = lines.iter().filter(|l| l["path"] != "/readyz").collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let (ok, refused) = (lines[0], lines[1]);
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/hello");
    assert_eq!(ok["route"], "/");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["user"], "-");
    assert_eq!(ok["auth"], "-");
    assert_eq!(ok["request_id"], ids[0].as_str());
    assert!(ok["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(ok["total_ms"].as_f64().unwrap() >= ok["upstream_ms"].as_f64().unwrap());
    assert!(humantime::parse_rfc3339(ok["time"].as_str().unwrap()).is_ok());
    assert_eq!(refused["path"], "/api/x");
    assert_eq!(refused["route"], "/api");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["auth"], "missing");
    assert_eq!(refused["request_id"], ids[1].as_str());
    assert!(refused.get("upstream_ms").is_none(), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_target_gets_one_json_line_per_request() {
    let setup = setup("target = \"file\"\npath = \"access.log\"\n").await;
    let mut gw = AuthgateProcess::start(&setup.config(), setup.port).await;
    let ids = two_requests(&gw).await;
    assert_eq!(setup.metric("authgate_access_log_dropped_total").await, 0.0);
    // Lines gather for a moment before they are written: stopping writes
    // what has gathered.
    assert!(gw.terminate().await.success());
    let path = setup.dir.path().join("access.log");
    let lines = parse(&std::fs::read_to_string(&path).unwrap());
    assert_lines(&lines, &ids);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "access.log is {mode:o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_target_gets_one_json_line_per_request() {
    let setup = setup("target = \"stdout\"\n").await;
    let mut command = serve_command(&setup.config());
    command.stdout(Stdio::piped());
    let mut gw = AuthgateProcess::spawn(command, setup.port).await;
    let ids = two_requests(&gw).await;
    let mut stdout = BufReader::new(gw.child.stdout.take().unwrap()).lines();
    let mut text = String::new();
    while !text.contains(&ids[1]) {
        let line = tokio::time::timeout(Duration::from_secs(5), stdout.next_line())
            .await
            .expect("no access line on stdout")
            .unwrap()
            .expect("stdout ended");
        text.push_str(&line);
        text.push('\n');
    }
    assert_lines(&parse(&text), &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_file_after_logrotate_renamed_it() {
    let setup = setup("target = \"file\"\npath = \"access.log\"\n").await;
    let gw = AuthgateProcess::start(&setup.config(), setup.port).await;
    let path = setup.dir.path().join("access.log");
    let rotated = setup.dir.path().join("access.log.1");
    let ok = |r: reqwest::Response| assert_eq!(r.status(), 200);
    ok(client().get(gw.url("/before")).send().await.unwrap());
    file_lines(&path, |text| text.contains("/before")).await;
    std::fs::rename(&path, &rotated).unwrap();
    // Until the signal, lines follow the renamed file.
    ok(client().get(gw.url("/renamed")).send().await.unwrap());
    let kept = file_lines(&rotated, |text| text.contains("/renamed")).await;
    assert!(!path.exists());
    let pid = gw.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    // The reload runs on its own task: requests go on until a line lands
    // in a new file under the old name.
    let mut after = 0;
    while std::fs::metadata(&path).map_or(true, |m| m.len() == 0) {
        assert!(after < 100, "no new access.log after SIGHUP");
        ok(client().get(gw.url("/after")).send().await.unwrap());
        after += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = file_lines(&path, |text| !text.is_empty()).await;
    assert!(fresh.iter().all(|l| l["path"] == "/after"), "{fresh:#?}");
    let old = parse(&std::fs::read_to_string(&rotated).unwrap());
    assert!(old.len() >= kept.len());
    assert_eq!(
        old.iter().filter(|l| l["path"] == "/renamed").count(),
        1,
        "{old:#?}"
    );
    let total_after = old.iter().filter(|l| l["path"] == "/after").count() + fresh.len();
    // Every request after the rename has its line, in one file or the other.
    for _ in 0..100 {
        let fresh = parse(&std::fs::read_to_string(&path).unwrap());
        let old = parse(&std::fs::read_to_string(&rotated).unwrap());
        let n = old.iter().filter(|l| l["path"] == "/after").count() + fresh.len();
        if n == after {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{total_after} of {after} lines after the rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pipe_never_blocks_a_request_lines_are_dropped_and_counted() {
    // stdout is a pipe nobody reads: it holds 64 KiB (some 250 lines), the
    // sink's buffer 100 more; everything after that is dropped.
    let setup = setup("target = \"stdout\"\nqueue = 100\n").await;
    let mut command = serve_command(&setup.config());
    command.stdout(Stdio::piped());
    let mut gw = AuthgateProcess::spawn(command, setup.port).await;
    let _unread = gw.child.stdout.take().unwrap();
    fill_the_pipe(&setup, &gw, "authgate_access_log_dropped_total").await;
}

/// The default target, the access event on the process log, as run with
/// `RUST_LOG=info` and stderr piped to a reader that stopped: the process
/// log queues its lines too, and drops them rather than wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stderr_pipe_never_blocks_a_request_log_lines_are_dropped_and_counted() {
    let setup = setup("target = \"log\"\nqueue = 100\n").await;
    let (gw, _unread) = with_stderr_unread(&setup, "info").await;
    fill_the_pipe(&setup, &gw, "authgate_log_lines_dropped_total").await;
}

/// A gateway with `RUST_LOG=info` and stderr sent to a file, as a service
/// manager does; the file's path.
async fn with_stderr_to_a_file(setup: &Setup) -> (AuthgateProcess, std::path::PathBuf) {
    let log_path = setup.dir.path().join("stderr.log");
    let mut command = serve_command(&setup.config());
    command
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap());
    (AuthgateProcess::spawn(command, setup.port).await, log_path)
}

/// A gateway whose stderr is a pipe nobody reads (held by the caller).
async fn with_stderr_unread(
    setup: &Setup,
    rust_log: &str,
) -> (AuthgateProcess, tokio::process::ChildStderr) {
    let mut command = serve_command(&setup.config());
    command.env("RUST_LOG", rust_log).stderr(Stdio::piped());
    let mut gw = AuthgateProcess::spawn(command, setup.port).await;
    let unread = gw.child.stderr.take().unwrap();
    (gw, unread)
}

/// The `stderr` target queues its lines on the process log's own writer:
/// one thread writes stderr, so an access line and a log event never
/// interleave inside a line in a pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stderr_target_shares_the_process_logs_writer() {
    let setup = setup("target = \"stderr\"\n").await;
    let (gw, log_path) = with_stderr_to_a_file(&setup).await;
    let ids = two_requests(&gw).await;
    support::process::log_line(&log_path, &ids[1]).await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let access: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("{\"time\""))
        .collect();
    assert_lines(&parse(&access.join("\n")), &ids);
    assert!(text.contains("listening"), "{text}");
    let pid = gw.child.id().unwrap();
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap())
        .map(|name| name.trim().to_string())
        .collect();
    assert!(threads.iter().any(|t| t == "authgate-log"), "{threads:?}");
    assert!(
        !threads.iter().any(|t| t.starts_with("authgate-access")),
        "a second stderr writer: {threads:?}"
    );
}

/// With the `stderr` target, `[access_log] queue` bounds the shared
/// writer, and the access lines it drops are counted as access lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stderr_pipe_drops_the_stderr_targets_lines_and_counts_them() {
    let setup = setup("target = \"stderr\"\nqueue = 100\n").await;
    let (gw, _unread) = with_stderr_unread(&setup, "warn").await;
    fill_the_pipe(&setup, &gw, "authgate_access_log_dropped_total").await;
}

/// 1,200 requests of some 400 bytes of log line each against a pipe nobody
/// reads: none waits, and most lines are counted in `dropped` instead.
async fn fill_the_pipe(setup: &Setup, gw: &AuthgateProcess, dropped: &str) {
    assert_eq!(setup.metric(dropped).await, 0.0);
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let url = gw.url(&format!("/fill/{w}/{}", "x".repeat(200)));
            tokio::spawn(async move {
                let client = client();
                for _ in 0..150 {
                    let response = client.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("requests stalled behind the full pipe")
            .unwrap();
    }
    let count = setup.metric(dropped).await;
    // At most ~160 lines fit the pipe, 100 the buffer.
    assert!(count >= 800.0, "only {count} lines dropped");
    // Still serving, still dropping.
    let response = client().get(gw.url("/after")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(setup.metric(dropped).await > count);
    eprintln!(
        "1,200 requests with a full pipe ({dropped}): {:?}",
        started.elapsed()
    );
}

/// The default target's lines, text format, with stderr sent to a file as
/// a service manager or a container runtime does: plain text, no
/// terminal colour codes.
#[tokio::test]
async fn the_log_target_writes_plain_text_without_colour_codes_to_a_file() {
    let setup = setup("target = \"log\"\n").await;
    let (gw, log_path) = with_stderr_to_a_file(&setup).await;
    let [ok, _] = two_requests(&gw).await;
    let line = support::process::log_line(&log_path, &ok).await;
    assert!(line.contains("authgate::access"), "{line}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains('\u{1b}'), "colour codes in a file:\n{log}");
}
