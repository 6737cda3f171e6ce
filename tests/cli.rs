//! The `authgate` binary: config errors, check-config, serve and SIGTERM,
//! the users commands against the users file.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::process::{run_authgate, AuthgateProcess};
use support::{binary, client, closed_port, Upstream};

fn write_config(dir: &tempfile::TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// Each bad file is refused by `check-config` and `serve` with a message
/// that names the key and the line.
#[test]
fn bad_configs_are_refused_with_key_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        ("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n", "line 3", "server.listn"),
        ("[server]\nmax_connections = \"many\"\n", "line 2", "server.max_connections"),
        ("[server]\nrequest_timeout = \"forever\"\n", "line 2", "invalid duration"),
        ("[server]\nlisten = \"nowhere\"\n", "line 2", "server.listen"),
        ("[[routes]]\nprefix = \"api\"\nupstream = \"http://a\"\n", "line 2", "routes[0].prefix"),
        ("[[routes]]\nprefix = \"/a\"\nupstream = \"ftp://a\"\n", "line 3", "routes[0].upstream"),
        (
            "[[routes]]\nprefix = \"/a\"\nupstream = \"http://a\"\n[[routes]]\nprefix = \"/a/\"\nupstream = \"http://b\"\n",
            "line 5",
            "duplicate route",
        ),
        ("[jwt]\nalgorithm = \"none\"\n", "line 2", "none"),
        ("[jwt]\nsecret_env = \"AUTHGATE_TEST_UNSET_VAR\"\n", "line 2", "jwt.secret_env"),
        ("[cookies]\nsame_site = \"none\"\nsecure = false\n", "line 2", "cookies.same_site"),
        ("[sessions]\nbackend = \"redis\"\n", "line 2", "sessions.redis_url"),
        ("[[routes]]\nprefix = \"/a\"\nupstream = \"http://a\"\nauth = \"maybe\"\n", "line 4", "maybe"),
        ("[[routes]]\nprefix = \"/a\"\nupstream = \"http://a\"\nauth = 5\n", "line 4", "routes[0].auth"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (body, line, key) in cases {
        let path = write_config(&dir, body);
        for command in [
            &["check-config"][..],
            &["serve", "--listen", "127.0.0.1:0"][..],
        ] {
            let out = run_authgate(&path, command);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{command:?} accepted:\n{body}");
            assert!(
                stderr.contains(line),
                "{command:?}: no {line:?} in {stderr}\nfor:\n{body}"
            );
            assert!(
                stderr.contains(key),
                "{command:?}: no {key:?} in {stderr}\nfor:\n{body}"
            );
        }
    }
}

/// `check-config` and `serve` read the same secrets and files, and both
/// name every problem rather than stopping at the first.
#[test]
fn check_config_and_serve_name_the_same_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "[jwt]\nsecret_env = \"AUTHGATE_TEST_UNSET_VAR\"\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"https://127.0.0.1:1\"\nupstream_ca = \"missing.pem\"\n",
    );
    let problems = |args: &[&str]| {
        let out = run_authgate(&path, args);
        assert!(!out.status.success(), "{args:?} accepted");
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("  line "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let checked = problems(&["check-config"]);
    assert_eq!(checked.len(), 2, "{checked:?}");
    assert!(checked[0].contains("jwt.secret_env"), "{checked:?}");
    assert!(checked[1].contains("routes[0].upstream_ca"), "{checked:?}");
    assert_eq!(problems(&["serve", "--listen", "127.0.0.1:0"]), checked);
}

#[test]
fn check_config_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "[server]\nlisten = \"127.0.0.1:9999\"\n[[routes]]\nprefix = \"/api/\"\nupstream = \"http://127.0.0.1:9000\"\nstrip_prefix = true\n",
    );
    let out = run_authgate(&path, &["check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("127.0.0.1:9999"), "{stdout}");
    assert!(stdout.contains("/api -> http://127.0.0.1:9000"), "{stdout}");
}

#[test]
fn the_example_gateway_toml_is_valid() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    let out = run_authgate(&example, &["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_path_comes_from_env_and_relative_paths_from_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    write_config(&dir, "[users]\npath = \"people.toml\"\nbcrypt_cost = 4\n");
    let mut child = Command::new(binary())
        .args(["users", "add", "zoe", "--password-stdin", "--role", "dev"])
        .env("AUTHGATE_CONFIG", dir.path().join("gateway.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"pw-of-zoe\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("people.toml")).unwrap();
    assert!(text.contains("username = \"zoe\""), "{text}");
}

#[test]
fn hash_password_reads_stdin() {
    let mut child = Command::new(binary())
        .args([
            "-c",
            "/nonexistent/gateway.toml",
            "hash-password",
            "--cost",
            "4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hunter2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$2b$04$"), "{hash}");
    // The trailing newline was not part of the password.
    assert!(bcrypt::verify("hunter2", hash.trim()).unwrap());
}

#[tokio::test]
async fn serve_answers_then_drains_on_sigterm() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let path = write_config(
        &dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[[routes]]\nprefix = \"/\"\nupstream = \"{}\"\nauth = \"public\"\n[users]\nbcrypt_cost = 4\n",
            up.url()
        ),
    );
    let mut gw = AuthgateProcess::start(&path, port).await;
    let slow_url = gw.url("/slow/700");
    let slow = tokio::spawn(async move { client().get(slow_url).send().await.map(|r| r.status()) });
    for _ in 0..100 {
        if up.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = gw.terminate().await;
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    assert!(status.success(), "{status:?}");
}

const HASH: &str = "$2b$04$abcdefghijklmnopqrstuu5Xh0kmQyO.A3mLSRZtVGhn7nUz3rS9u";

/// Issue 18: a users file that `serve` refuses, `check-config` refuses too,
/// with the same message naming the user and the key. A role with a comma
/// would reach upstreams as two roles; a control character would make the
/// identity header unsendable.
#[test]
fn check_config_and_serve_refuse_the_same_users_files() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "username = \"bad user\"",
            "users[1].username",
            "\"bad user\"",
        ),
        (
            "username = \"eve\"\nroles = [\"dev,admin\"]",
            "users[1].roles",
            "\"dev,admin\"",
        ),
        (
            "username = \"eve\"\nroles = [\"dev admin\"]",
            "users[1].roles",
            "\"eve\"",
        ),
        (
            "username = \"eve\"\nroles = [\"dev\\u0007\"]",
            "users[1].roles",
            "\"eve\"",
        ),
        (
            "username = \"eve\"\nemail = \"eve@example.com\\r\\nX-Auth-Roles: admin\"",
            "users[1].email",
            "\"eve\"",
        ),
        (
            "username = \"eve\"\nclaims = { tenant = \"a\\nb\" }",
            "users[1].claims",
            "\"tenant\"",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[users]\npath = \"users.toml\"\nbcrypt_cost = 4\n",
            closed_port()
        ),
    );
    for (user, key, named) in cases {
        std::fs::write(
            dir.path().join("users.toml"),
            format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{HASH}\"\n[[users]]\n{user}\npassword_hash = \"{HASH}\"\n"),
        )
        .unwrap();
        let mut messages = Vec::new();
        for command in [&["check-config"][..], &["serve"][..]] {
            let out = run_authgate(&path, command);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!out.status.success(), "{command:?} accepted {user}");
            assert!(stderr.contains(key), "{command:?}: no {key} in {stderr}");
            assert!(
                stderr.contains(named),
                "{command:?}: no {named} in {stderr}"
            );
            messages.push(
                stderr
                    .lines()
                    .find(|l| l.contains(key))
                    .map(|l| l.trim_start_matches("error: ").to_string()),
            );
        }
        assert_eq!(messages[0], messages[1], "{user}");
    }
}

/// `users add` refuses a role the gateway could not pass on as one role,
/// before it asks for a password, and leaves the file untouched.
#[test]
fn users_add_refuses_a_role_with_a_comma_or_whitespace() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "[users]\npath = \"users.toml\"\nbcrypt_cost = 4\n");
    for role in ["dev,admin", "dev admin", "dev\n"] {
        // No --password-stdin and no terminal: a prompt would fail with
        // another message.
        let out = run_authgate(
            &path,
            &["users", "add", "eve", "--role", "ops", "--role", role],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role:?} accepted");
        assert!(
            stderr.contains(&format!("user \"eve\": role {role:?}")),
            "{role:?}: {stderr}"
        );
        assert!(!dir.path().join("users.toml").exists());
    }
}
