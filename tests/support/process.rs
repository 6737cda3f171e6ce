//! The `authgate` binary run as an operator runs it, for what only a real
//! process shows: signals, the pid file, reloads, several instances sharing
//! one session store.

use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::{binary, client, SECRET, SECRET_ENV, TOTP_KEY, TOTP_KEY_ENV};

/// The test secret under the default `jwt.secret_env` and under
/// [`SECRET_ENV`], so a config written for `TestGateway` runs unchanged.
fn with_test_env(command: &mut std::process::Command) -> &mut std::process::Command {
    command
        .env("AUTHGATE_JWT_SECRET", SECRET)
        .env(SECRET_ENV, SECRET)
        .env(TOTP_KEY_ENV, TOTP_KEY)
        .env("RUST_LOG", "warn")
}

/// Runs `authgate -c config args...` to completion.
pub fn run_authgate(config: &Path, args: &[&str]) -> Output {
    with_test_env(Command::new(binary()).arg("-c").arg(config).args(args))
        .output()
        .unwrap()
}

/// `authgate -c config` (serve), with the test environment and no stdout;
/// callers may change the log level or send stderr to a file before
/// [`AuthgateProcess::spawn`].
pub fn serve_command(config: &Path) -> tokio::process::Command {
    let mut command = Command::new(binary());
    with_test_env(command.arg("-c").arg(config)).stdout(Stdio::null());
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    command
}

/// A running `authgate` process, killed when dropped.
pub struct AuthgateProcess {
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl AuthgateProcess {
    /// Starts `authgate -c config`; the config must listen on
    /// 127.0.0.1:`port`.
    pub async fn start(config: &Path, port: u16) -> AuthgateProcess {
        Self::spawn(serve_command(config), port).await
    }

    /// Spawns `command` (from [`serve_command`]) and waits until the process
    /// is ready: `/readyz` answers 200, so its stores answer as well as its
    /// listener.
    pub async fn spawn(mut command: tokio::process::Command, port: u16) -> AuthgateProcess {
        let child = command.spawn().unwrap();
        let mut process = AuthgateProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if client()
                .get(process.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return process;
            }
            // A config it refuses ends it at once: say so rather than wait.
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!("authgate exited ({status}) before it was ready on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("authgate did not become ready on port {port}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits (10 s at most) for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("authgate still running 10 s after SIGTERM")
            .unwrap()
    }
}

/// The first line of the log file `path` that contains `needle`, waiting
/// (5 s at most) for it: the process log's writer thread gathers lines for
/// up to 50 ms before it writes them.
pub async fn log_line(path: &Path, needle: &str) -> String {
    for _ in 0..100 {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(path).unwrap_or_default();
    panic!("no {needle} line in:\n{log}");
}
