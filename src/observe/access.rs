//! The access log: one line per request, as `[access_log] target` says.
//!
//! `log` (the default) is the `authgate::access` tracing event, filtered by
//! `RUST_LOG` and formatted by the process's subscriber, as before the
//! other targets existed. `stdout`, `stderr` and `file` write JSON lines
//! through a [`LineSink`]: formatted straight into the sink's buffer (no
//! tracing, no allocation per line) and written by the sink's own thread,
//! so a slow disk or a full pipe costs a request nothing; a line that finds
//! the buffer full is dropped and counted in
//! `authgate_access_log_dropped_total`.

use std::io::Write;
use std::time::SystemTime;

use http::{Method, Uri};

use super::sink::{LineSink, Pushed, SinkTarget};
use super::{logs, metrics};
use crate::config::AccessLogConfig;

/// Where the access lines go; made once at start.
#[derive(Debug)]
pub enum AccessLog {
    Tracing,
    Off,
    /// A writer of the access log's own (`stdout`, `file`).
    Lines(LineSink),
    /// `stderr`: the process log's writer ([`logs::sink`]), which already
    /// writes stderr. A second writer thread would interleave its batches
    /// with the log's in a pipe, in the middle of lines.
    Shared(&'static LineSink),
}

/// One request's line, as the response filter knows it.
#[derive(Debug)]
pub struct AccessLine<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub route: &'a str,
    pub status: u16,
    pub user: &'a str,
    pub auth: &'static str,
    pub upstream_ms: Option<f64>,
    pub total_ms: f64,
    pub request_id: &'a str,
}

impl AccessLog {
    pub fn open(config: &AccessLogConfig) -> std::io::Result<AccessLog> {
        Ok(match config {
            AccessLogConfig::Log { .. } => AccessLog::Tracing,
            AccessLogConfig::Off => AccessLog::Off,
            AccessLogConfig::Lines { target, queue } => match (target, logs::sink()) {
                (SinkTarget::Stderr, Some(log)) => AccessLog::Shared(log),
                // Without the process's log (a gateway inside a test or a
                // library user), stderr gets a writer of its own.
                _ => AccessLog::Lines(LineSink::open(target.clone(), *queue, "access-log")?),
            },
        })
    }

    /// Whether a request's line will be written: the method and URI are
    /// kept for it only then.
    pub fn enabled(&self) -> bool {
        match self {
            AccessLog::Tracing => {
                tracing::enabled!(target: "authgate::access", tracing::Level::INFO)
            }
            AccessLog::Off => false,
            AccessLog::Lines(_) | AccessLog::Shared(_) => true,
        }
    }

    /// The sink JSON lines go to, own or shared.
    fn lines(&self) -> Option<&LineSink> {
        match self {
            AccessLog::Lines(sink) => Some(sink),
            AccessLog::Shared(sink) => Some(sink),
            AccessLog::Tracing | AccessLog::Off => None,
        }
    }

    pub fn write(&self, line: &AccessLine<'_>) {
        if let Some(sink) = self.lines() {
            let now = SystemTime::now();
            if sink.push(|buf| line.format(buf, now)) == Pushed::Dropped {
                metrics::get().access_log_dropped();
            }
        } else if let AccessLog::Tracing = self {
            tracing::info!(
                target: "authgate::access",
                method = %line.method,
                path = line.uri.path(),
                route = line.route,
                status = line.status,
                user = line.user,
                auth = line.auth,
                upstream_ms = line.upstream_ms,
                total_ms = line.total_ms,
                request_id = line.request_id,
            );
        }
    }

    /// Waits (a few seconds at most) until every line so far is written:
    /// at exit.
    pub fn flush(&self) -> bool {
        self.lines()
            .is_none_or(|sink| sink.flush(std::time::Duration::from_secs(5)))
    }

    /// SIGHUP: a file target is reopened (logrotate renamed it).
    pub fn reopen(&self) {
        if let AccessLog::Lines(sink) = self {
            sink.reopen();
        }
    }
}

impl AccessLine<'_> {
    /// The line as one JSON object, the fields in a fixed order.
    pub fn format(&self, buf: &mut Vec<u8>, now: SystemTime) {
        let _ = write!(
            buf,
            "{{\"time\":\"{}\"",
            humantime::format_rfc3339_millis(now)
        );
        field(buf, "method", self.method.as_str());
        field(buf, "path", self.uri.path());
        field(buf, "route", self.route);
        let _ = write!(buf, ",\"status\":{}", self.status);
        field(buf, "user", self.user);
        field(buf, "auth", self.auth);
        if let Some(ms) = self.upstream_ms {
            let _ = write!(buf, ",\"upstream_ms\":{ms:.3}");
        }
        let _ = write!(buf, ",\"total_ms\":{:.3}", self.total_ms);
        field(buf, "request_id", self.request_id);
        buf.push(b'}');
    }
}

/// `,"name":"value"`, the value escaped as JSON (serde_json's escaping,
/// written in place).
pub(crate) fn field(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":");
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(method: &'a Method, uri: &'a Uri, user: &'a str) -> AccessLine<'a> {
        AccessLine {
            method,
            uri,
            route: "/api",
            status: 200,
            user,
            auth: "ok",
            upstream_ms: Some(1.25),
            total_ms: 2.5,
            request_id: "id-1",
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field() {
        let (method, uri) = (Method::GET, Uri::from_static("/api/x?q=1"));
        let mut buf = Vec::new();
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        line(&method, &uri, "alice").format(&mut buf, at);
        let value: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "time": "2023-11-14T22:13:20.123Z", "method": "GET", "path": "/api/x",
                "route": "/api", "status": 200, "user": "alice", "auth": "ok",
                "upstream_ms": 1.25, "total_ms": 2.5, "request_id": "id-1"
            })
        );
        assert!(!buf.contains(&b'\n'));
    }

    #[test]
    fn values_are_escaped_as_serde_json_escapes_them() {
        let (method, uri) = (Method::GET, Uri::from_static("/"));
        for user in [
            "a\"b",
            "back\\slash",
            "new\nline\r\t",
            "\u{1}\u{1f}",
            "é✓😀",
            "</script>",
        ] {
            let mut buf = Vec::new();
            line(&method, &uri, user).format(&mut buf, SystemTime::UNIX_EPOCH);
            let value: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(value["user"], user);
            let expected = serde_json::to_string(user).unwrap();
            let text = String::from_utf8(buf).unwrap();
            assert!(text.contains(&format!("\"user\":{expected}")), "{text}");
            assert!(!text.contains('\n'));
        }
    }
}
