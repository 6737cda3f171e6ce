//! Issue 5: two authgate processes sharing a local 3-master Redis Cluster:
//! refresh rotation and reuse detection stay atomic across nodes.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::process::AuthgateProcess;
use support::{
    client, closed_port, cookie_value, password_grant, refresh_grant, set_cookies, tokens, Upstream,
};

/// A 3-master Redis Cluster on loopback ports, removed when dropped.
struct Cluster {
    nodes: Vec<(u16, Child)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            // The cluster bus is given its port too: by default it is the
            // node's port + 10,000, which no one has checked is free.
            let (port, bus) = (closed_port(), closed_port());
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .current_dir(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (apt-get install redis-server)");
            nodes.push((port, child));
        }
        // Owned from here: a panic below still stops the nodes.
        let cluster = Cluster { nodes, dir };
        for (port, _) in &cluster.nodes {
            wait_for_ping(*port);
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Wait until every node agrees the cluster is ok.
        for _ in 0..100 {
            let ok = cluster.nodes.iter().all(|(p, _)| {
                let out = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
            });
            if ok {
                return cluster;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not become ready");
    }

    fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every key and value in the cluster.
    fn dump(&self) -> String {
        let mut all = String::new();
        for (p, _) in &self.nodes {
            let keys = Command::new("redis-cli")
                .args(["-p", &p.to_string(), "--scan"])
                .output()
                .unwrap();
            for key in String::from_utf8_lossy(&keys.stdout).lines() {
                all.push_str(key);
                let value = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "hgetall", key])
                    .output()
                    .unwrap();
                all.push_str(&String::from_utf8_lossy(&value.stdout));
            }
        }
        let _ = &self.dir;
        all
    }
}

impl Cluster {
    /// Moves every retirement back by `by`, as if that long had passed
    /// since: the grace is judged from a retired token's `used_at`, and the
    /// clock of an authgate process cannot be moved from a test.
    fn backdate_retirements(&self, by: Duration) {
        let mut moved = 0;
        for (p, _) in &self.nodes {
            let cli = |args: &[&str]| {
                let out = Command::new("redis-cli")
                    .args(["-p", &p.to_string()])
                    .args(args)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            };
            for key in cli(&["--scan", "--pattern", "*:t:*"]).lines() {
                if !cli(&["hget", key, "used_at"]).is_empty() {
                    let back = format!("-{}", by.as_millis());
                    cli(&["hincrby", key, "used_at", &back]);
                    moved += 1;
                }
            }
        }
        assert!(moved > 0, "no retired token in the cluster");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for_ping(port: u16) {
    for _ in 0..100 {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output();
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server on {port} did not start");
}

/// An authgate process using the cluster.
async fn instance(
    dir: &std::path::Path,
    name: &str,
    upstream: &Upstream,
    redis_url: &str,
) -> AuthgateProcess {
    let port = closed_port();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [[routes]]\nprefix = \"/api\"\nupstream = \"{}\"\n\
             [jwt]\naccess_ttl = \"1s\"\n\
             [users]\npath = \"users.toml\"\nbcrypt_cost = 4\n\
             [cookies]\nsecure = false\n\
             [sessions]\nbackend = \"redis\"\nredis_url = \"{redis_url}\"\nkey_prefix = \"cluster-test:\"\nreuse_grace = \"1s\"\n",
            upstream.url()
        ),
    )
    .unwrap();
    AuthgateProcess::start(&config, port).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_reuse_detection_across_two_instances_on_a_cluster() {
    let cluster = Cluster::start();
    let up = Upstream::start("api").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.toml"),
        support::users_toml(&[support::user("alice", "alice-pw", &["dev"])]),
    )
    .unwrap();
    let a = instance(dir.path(), "a", &up, &cluster.url()).await;
    let b = instance(dir.path(), "b", &up, &cluster.url()).await;

    // Log in at A; several sessions so keys spread over the slots.
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let login = password_grant(a.url("/token"), "alice", "alice-pw").await;
        sessions.push(tokens(login).await.refresh);
    }

    for original in &sessions {
        // Parallel silent refreshes at both instances: one successor.
        let expired_cookie = format!("refresh_token={original}");
        let mut handles = Vec::new();
        for i in 0..8 {
            let base = if i % 2 == 0 {
                a.base.clone()
            } else {
                b.base.clone()
            };
            let cookie = expired_cookie.clone();
            handles.push(tokio::spawn(async move {
                let r = client()
                    .get(format!("{base}/api/x"))
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap();
                (
                    r.status().as_u16(),
                    cookie_value(&set_cookies(r.headers()), "refresh_token"),
                )
            }));
        }
        let mut successors = Vec::new();
        for h in handles {
            let (status, successor) = h.await.unwrap();
            assert_eq!(status, 200);
            successors.push(successor.expect("a silent refresh sets the new refresh cookie"));
        }
        successors.dedup();
        assert_eq!(successors.len(), 1, "the family forked: {successors:?}");
        let successor = successors.pop().unwrap();
        assert!(
            !cluster.dump().contains(&successor),
            "a raw refresh token is stored in Redis"
        );

        // After the grace period, replaying the retired token at B is theft:
        // the family is revoked, and the successor dies with it at A.
        cluster.backdate_retirements(Duration::from_secs(2));
        let replay = refresh_grant(b.url("/token"), original).await;
        assert_eq!(replay.status(), 400);
        assert_eq!(
            refresh_grant(a.url("/token"), &successor).await.status(),
            400
        );
    }

    // Logout at A holds at B.
    let token = tokens(password_grant(a.url("/token"), "alice", "alice-pw").await)
        .await
        .refresh;
    let out = client()
        .post(a.url("/logout"))
        .form(&[("refresh_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(refresh_grant(b.url("/token"), &token).await.status(), 400);
}

/// Issue 21 on a Cluster: a logout's message reaches the sockets, and the
/// batched check (an `MGET` the client splits by slot) catches a
/// revocation that sent none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_close_on_revocation_on_a_cluster() {
    use base64::Engine;
    use support::ws::{close_code, cookie_header, logout, open_ws, round_trip, Echo};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let cluster = Cluster::start();
    let echo = Echo::start().await;
    let gw = support::TestGateway::start(
        &format!(
            "[sessions]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"ws:\"\n{}",
            cluster.url(),
            echo.route("/ws")
        ),
        &[support::user("alice", "alice-pw", &[])],
    )
    .await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (_, cookies) = gw.login("alice", "alice-pw").await;
        let (ws, _) = open_ws(&gw, "/ws/echo", ("cookie", cookie_header(&cookies))).await;
        sockets.push((cookies, ws));
    }
    let (cookies, mut ws) = sockets.pop().unwrap();
    logout(&gw, &cookies).await;
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));

    let (cookies, mut ws) = sockets.pop().unwrap();
    let refresh = cookie_value(&cookies, "refresh_token").unwrap();
    let family = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(refresh)
        .unwrap();
    let end = format!("ws:{{f:{}}}:end", authgate::sessions::hex(&family[..16]));
    let port = cluster.nodes[0].0.to_string();
    let out = Command::new("redis-cli")
        .args(["-c", "-p", &port, "set", &end, "revoked", "keepttl"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    round_trip(&mut sockets.pop().unwrap().1).await;
}

/// A redis-server of one test, stopped when dropped (also when the test
/// fails half-way).
struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_redis(dir: &std::path::Path, args: &[&str]) -> RedisServer {
    RedisServer(
        Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed"),
    )
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_survives_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (master_port, replica_port, sentinel_port) = (closed_port(), closed_port(), closed_port());
    let base_args = |port: u16| {
        vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
        ]
    };
    let master_args = base_args(master_port);
    let _master = spawn_redis(
        dir.path(),
        &master_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    wait_for_ping(master_port);
    let mut replica_args = base_args(replica_port);
    replica_args.extend([
        "--replicaof".into(),
        "127.0.0.1".into(),
        master_port.to_string(),
    ]);
    let _replica = spawn_redis(
        dir.path(),
        &replica_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    wait_for_ping(replica_port);
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor authgate 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds authgate 1000\nsentinel failover-timeout authgate 5000\n"
        ),
    )
    .unwrap();
    let _sentinel = spawn_redis(dir.path(), &[conf.to_str().unwrap(), "--sentinel"]);
    wait_for_ping(sentinel_port);
    // Wait for the replica to be in sync and known to Sentinel.
    for _ in 0..100 {
        if redis_cli(replica_port, &["info", "replication"]).contains("master_link_status:up")
            && redis_cli(sentinel_port, &["sentinel", "replicas", "authgate"])
                .contains(&replica_port.to_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let up = Upstream::start("api").await;
    let echo = support::ws::Echo::start().await;
    std::fs::write(
        dir.path().join("users.toml"),
        support::users_toml(&[support::user("alice", "alice-pw", &[])]),
    )
    .unwrap();
    let config = dir.path().join("g.toml");
    let port = closed_port();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[[routes]]\nprefix = \"/api\"\nupstream = \"{}\"\n{}\
             [users]\npath = \"users.toml\"\nbcrypt_cost = 4\n[cookies]\nsecure = false\n\
             [sessions]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{sentinel_port}\"\nsentinel_master = \"authgate\"\n",
            up.url(),
            echo.route("/ws")
        ),
    )
    .unwrap();
    // Ready means Sentinel named the master and the master answered.
    let gw = AuthgateProcess::start(&config, port).await;
    let login = tokens(password_grant(gw.url("/token"), "alice", "alice-pw").await).await;
    let token = tokens(refresh_grant(gw.url("/token"), &login.refresh).await)
        .await
        .refresh;
    // A WebSocket of a session begun before the failover.
    let cookies = set_cookies(
        password_grant(gw.url("/token"), "alice", "alice-pw")
            .await
            .headers(),
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let header = ("cookie", support::ws::cookie_header(&cookies));
    let (mut ws, _) = support::ws::open_ws_at(addr, "/ws/echo", header).await;
    // Let the replica catch up, then fail over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(redis_cli(sentinel_port, &["sentinel", "failover", "authgate"]).contains("OK"));
    for _ in 0..100 {
        if redis_cli(
            sentinel_port,
            &["sentinel", "get-master-addr-by-name", "authgate"],
        )
        .contains(&replica_port.to_string())
            && redis_cli(replica_port, &["info", "replication"]).contains("role:master")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The session, written before the failover, keeps rotating on the new
    // master (the first attempt may meet the demoted master and answer 503).
    let mut status = 0;
    for _ in 0..50 {
        status = refresh_grant(gw.url("/token"), &token)
            .await
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "a failover must never look like a bad token");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200);
    // A logout after the failover still closes the socket.
    let refresh = cookie_value(&cookies, "refresh_token").unwrap();
    let out = client()
        .post(gw.url("/logout"))
        .form(&[("refresh_token", refresh.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(
        support::ws::close_code(&mut ws).await,
        Some(tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Policy)
    );
    // The gateway goes first, then the sentinel, the replica, the master.
    drop(gw);
}
