//! A Redis server of a test's own, on a free port: to count the commands
//! authgate sends, or to kill it, without touching the shared one.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    /// Its data (append-only file, fsynced at every write): it survives a
    /// kill, as a persistent production Redis does.
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let mut redis = PrivateRedis {
            port: super::closed_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.answers() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the private redis-server on {} did not start", self.port);
    }

    /// SIGKILL, as a crash: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process would otherwise only die at its SIGCONT.
            // SAFETY: as in `signal`.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: a hang, not a refusal (its sockets stay open).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id() as libc::pid_t;
        // SAFETY: kill(2) on a child this test spawned and still owns.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Whether it answers `PING` (do not ask while it is paused).
    pub fn answers(&self) -> bool {
        self.cli(&["ping"]) == "PONG"
    }

    /// `redis-cli` with `args`; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Commands executed (those inside scripts included) per second over
    /// `window`, from `INFO commandstats`, leaving out the counting itself.
    pub async fn commands_per_second(&self, window: Duration) -> f64 {
        self.cli(&["config", "resetstat"]);
        tokio::time::sleep(window).await;
        let stats = self.cli(&["info", "commandstats"]);
        let calls: u64 = stats
            .lines()
            .filter(|l| !l.starts_with("cmdstat_info:") && !l.starts_with("cmdstat_config"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        calls as f64 / window.as_secs_f64()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
