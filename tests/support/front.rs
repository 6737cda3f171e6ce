//! Front proxies (nginx, Caddy) run for real in front of an in-process
//! authgate, for the forward-auth tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TestGateway, Upstream};

/// A running front proxy (nginx or Caddy), stopped on drop.
pub struct Proxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its workers;
        // killed outright, it leaves them running, still listening.
        // SAFETY: kill(2) on our own child's pid with a constant signal.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Spawns `command` (its configuration in `dir`, listening on
    /// `port`) and waits until it listens; `log` names what to read when
    /// it does not.
    pub async fn spawn(
        mut command: Command,
        port: u16,
        dir: tempfile::TempDir,
        log: &str,
    ) -> Proxy {
        let name = command.get_program().to_string_lossy().into_owned();
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let proxy = Proxy { child, port, dir };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return proxy;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(proxy.dir.path().join(log)).unwrap_or_default();
        panic!("{name} did not listen on {port}: {log}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// Fails, saying how to get it, when the proxy is not installed.
pub fn require(binary: &str, package: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: this test runs Debian's {package} in front of authgate; \
         `bash .ci/run` installs it (or: apt-get install -y {package})"
    );
}

pub const CADDY: &str = "/usr/bin/caddy";

/// The Caddy configuration docs/forward-auth.md gives, on test ports.
fn caddyfile(port: u16, gateway: &str, upstream: &str) -> String {
    format!(
        r#"{{
    admin off
    auto_https off
}}
:{port} {{
    handle /auth/* {{
        reverse_proxy {gateway}
    }}
    handle {{
        route {{
            request_header -X-Auth-User
            request_header -X-Auth-Email
            request_header -X-Auth-Roles
            forward_auth {gateway} {{
                uri /auth/verify/redirect
                copy_headers X-Auth-User X-Auth-Email X-Auth-Roles
            }}
            @user_unset header_regexp X-Auth-User ^.http\.reverse_proxy\.header\.
            request_header @user_unset -X-Auth-User
            @email_unset header_regexp X-Auth-Email ^.http\.reverse_proxy\.header\.
            request_header @email_unset -X-Auth-Email
            @roles_unset header_regexp X-Auth-Roles ^.http\.reverse_proxy\.header\.
            request_header @roles_unset -X-Auth-Roles
            reverse_proxy {upstream}
        }}
    }}
}}
"#
    )
}

/// Caddy with that configuration, in front of `gateway` and `upstream`.
pub async fn start_caddy(gateway: &TestGateway, upstream: &Upstream) -> Proxy {
    require(CADDY, "caddy");
    let dir = tempfile::tempdir().unwrap();
    let port = super::closed_port();
    let conf = caddyfile(port, &gateway.addr.to_string(), &upstream.addr.to_string());
    let file = dir.path().join("Caddyfile");
    std::fs::write(&file, conf).unwrap();
    let mut command = Command::new(CADDY);
    command
        .arg("run")
        .arg("--config")
        .arg(&file)
        .args(["--adapter", "caddyfile"])
        // Caddy keeps state under XDG dirs: the temp dir, not $HOME.
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path());
    Proxy::spawn(command, port, dir, "error.log").await
}
