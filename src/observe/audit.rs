//! The audit trail: one line per security event (docs/audit.md), apart
//! from the access log and never holding a password, token, code or
//! secret. A line names who (`user`), from where (`client_ip` after
//! `trusted_proxies`, `user_agent`, `request_id`), which session (the
//! family id, never a token) and why (`reason`).
//!
//! `[audit] target = "stderr"` (the default) is the `authgate::audit`
//! tracing event, on the process's log; `"file"` writes JSON lines through
//! a [`LineSink`] with a large buffer (65,536 events). An event that finds
//! it full is dropped rather than waited for, like an access line — a
//! login must not hang on a stalled disk — but never silently: it is
//! counted in `authgate_audit_dropped_total` and a warning goes to the
//! process's log (at most one a second).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::access::field;
use super::metrics;
use super::sink::{LineSink, Pushed, SinkTarget};
use crate::clock::Clock;
use crate::config::AuditConfig;
use crate::sessions::FamilyId;

/// Every event of the trail; [`AuditEvent::name`] is its `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditEvent {
    LoginSucceeded,
    /// `reason`: a [`crate::auth::login::LoginFailure`]'s audit reason.
    LoginFailed,
    /// `reason`: `explicit` (a `refresh_token` grant) or `silent` (the
    /// refresh cookie, behind a request).
    TokenRefreshed,
    /// A retired refresh token replayed: its family is revoked.
    RefreshReuseDetected,
    Logout,
    /// `authgate sessions revoke`; `reason` says how many.
    SessionsRevoked,
    UserCreated,
    UserChanged,
    UserDeleted,
    TotpEnrolled,
    TotpRemoved,
    /// `reason`: `ok`, or why the file was refused.
    ConfigReloaded,
}

impl AuditEvent {
    pub const ALL: [AuditEvent; 12] = [
        AuditEvent::LoginSucceeded,
        AuditEvent::LoginFailed,
        AuditEvent::TokenRefreshed,
        AuditEvent::RefreshReuseDetected,
        AuditEvent::Logout,
        AuditEvent::SessionsRevoked,
        AuditEvent::UserCreated,
        AuditEvent::UserChanged,
        AuditEvent::UserDeleted,
        AuditEvent::TotpEnrolled,
        AuditEvent::TotpRemoved,
        AuditEvent::ConfigReloaded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AuditEvent::LoginSucceeded => "login_succeeded",
            AuditEvent::LoginFailed => "login_failed",
            AuditEvent::TokenRefreshed => "token_refreshed",
            AuditEvent::RefreshReuseDetected => "refresh_reuse_detected",
            AuditEvent::Logout => "logout",
            AuditEvent::SessionsRevoked => "sessions_revoked",
            AuditEvent::UserCreated => "user_created",
            AuditEvent::UserChanged => "user_changed",
            AuditEvent::UserDeleted => "user_deleted",
            AuditEvent::TotpEnrolled => "totp_enrolled",
            AuditEvent::TotpRemoved => "totp_removed",
            AuditEvent::ConfigReloaded => "config_reloaded",
        }
    }
}

/// Where a request came from, for an event it caused.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The client's address after `trusted_proxies`, as the login
    /// throttle sees it.
    pub client_ip: IpAddr,
    pub user_agent: Option<&'a str>,
    pub request_id: &'a str,
}

/// One event and what is known about it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub event: AuditEvent,
    pub user: Option<&'a str>,
    pub session: Option<&'a FamilyId>,
    pub reason: Option<&'a str>,
    pub origin: Option<Origin<'a>>,
}

impl<'a> Record<'a> {
    pub fn new(event: AuditEvent) -> Record<'a> {
        Record {
            event,
            user: None,
            session: None,
            reason: None,
            origin: None,
        }
    }

    pub fn user(self, user: &'a str) -> Record<'a> {
        Record {
            user: Some(user),
            ..self
        }
    }

    pub fn session(self, session: &'a FamilyId) -> Record<'a> {
        Record {
            session: Some(session),
            ..self
        }
    }

    pub fn reason(self, reason: &'a str) -> Record<'a> {
        Record {
            reason: Some(reason),
            ..self
        }
    }

    pub fn origin(self, origin: Origin<'a>) -> Record<'a> {
        Record {
            origin: Some(origin),
            ..self
        }
    }

    /// The line as one JSON object, the fields in a fixed order; absent
    /// ones left out.
    fn format(&self, buf: &mut Vec<u8>, now: std::time::SystemTime) {
        use std::io::Write;
        let _ = write!(
            buf,
            "{{\"time\":\"{}\"",
            humantime::format_rfc3339_millis(now)
        );
        field(buf, "event", self.event.name());
        if let Some(user) = self.user {
            field(buf, "user", user);
        }
        if let Some(origin) = &self.origin {
            let _ = write!(buf, ",\"client_ip\":\"{}\"", origin.client_ip);
            if let Some(agent) = origin.user_agent {
                field(buf, "user_agent", agent);
            }
            field(buf, "request_id", origin.request_id);
        }
        if let Some(session) = self.session {
            field(buf, "session", &crate::sessions::hex(session));
        }
        if let Some(reason) = self.reason {
            field(buf, "reason", reason);
        }
        buf.push(b'}');
    }
}

#[derive(Debug)]
enum Out {
    Off,
    Tracing,
    Lines(LineSink),
}

/// The trail, opened once at start (and by each CLI command that writes
/// to it).
#[derive(Debug)]
pub struct Audit {
    out: Out,
    clock: Clock,
    /// Unix seconds of the last "events dropped" warning.
    last_drop_warning: AtomicU64,
}

impl Audit {
    /// The gateway's trail: `stderr` is the tracing event.
    pub fn open(config: &AuditConfig, clock: Clock) -> std::io::Result<Audit> {
        let out = match (config.enabled, &config.file) {
            (false, _) => Out::Off,
            (true, None) => Out::Tracing,
            (true, Some(path)) => Out::Lines(Self::file_sink(path)?),
        };
        Ok(Audit::with(out, clock))
    }

    /// A CLI command's trail: it has no tracing subscriber, so `stderr`
    /// is a JSON line written there directly.
    pub fn open_for_cli(config: &AuditConfig) -> std::io::Result<Audit> {
        let out = match (config.enabled, &config.file) {
            (false, _) => Out::Off,
            (true, None) => Out::Lines(LineSink::open(
                SinkTarget::Stderr,
                crate::config::defaults::AUDIT_QUEUE,
                "audit",
            )?),
            (true, Some(path)) => Out::Lines(Self::file_sink(path)?),
        };
        Ok(Audit::with(out, Clock::system()))
    }

    /// No trail (a gateway built in memory by unit tests, dev mode).
    pub fn off() -> Audit {
        Audit::with(Out::Off, Clock::system())
    }

    fn with(out: Out, clock: Clock) -> Audit {
        Audit {
            out,
            clock,
            last_drop_warning: AtomicU64::new(0),
        }
    }

    fn file_sink(path: &std::path::Path) -> std::io::Result<LineSink> {
        LineSink::open(
            SinkTarget::File(path.to_path_buf()),
            crate::config::defaults::AUDIT_QUEUE,
            "audit",
        )
        .map_err(|e| std::io::Error::new(e.kind(), format!("audit.path: {e}")))
    }

    pub fn record(&self, record: Record<'_>) {
        let name = record.event.name();
        match &self.out {
            Out::Off => return,
            Out::Tracing => {
                let origin = record.origin.as_ref();
                tracing::info!(
                    target: "authgate::audit",
                    event = name,
                    user = record.user,
                    client_ip = origin.map(|o| tracing::field::display(o.client_ip)),
                    user_agent = origin.and_then(|o| o.user_agent),
                    request_id = origin.map(|o| o.request_id),
                    session = record.session.map(|s| tracing::field::display(crate::sessions::hex(s))),
                    reason = record.reason,
                );
            }
            Out::Lines(sink) => {
                let now = self.clock.now();
                if sink.push(|buf| record.format(buf, now)) == Pushed::Dropped {
                    self.dropped(name);
                }
            }
        }
        metrics::get().audit_event(name);
    }

    fn dropped(&self, event: &'static str) {
        metrics::get().audit_dropped();
        let now = self.clock.unix_secs();
        let last = self.last_drop_warning.load(Ordering::Relaxed);
        if now > last
            && self
                .last_drop_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                event = "audit_dropped",
                dropped = event,
                "the audit file does not keep up: events dropped (authgate_audit_dropped_total)"
            );
        }
    }

    /// SIGHUP: a file target is reopened (logrotate renamed it).
    pub fn reopen(&self) {
        if let Out::Lines(sink) = &self.out {
            sink.reopen();
        }
    }

    /// Waits until every event recorded so far is written (a CLI command
    /// before it exits; a test before it reads the file).
    pub fn flush(&self) -> bool {
        match &self.out {
            Out::Lines(sink) => sink.flush(Duration::from_secs(5)),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_object_without_absent_fields() {
        let family = [0xab; 16];
        let origin = Origin {
            client_ip: "192.0.2.7".parse().unwrap(),
            user_agent: Some("curl/8 \"x\""),
            request_id: "rid",
        };
        let record = Record::new(AuditEvent::LoginSucceeded)
            .user("alice")
            .session(&family)
            .origin(origin);
        let mut buf = Vec::new();
        record.format(&mut buf, std::time::SystemTime::UNIX_EPOCH);
        let value: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "time": "1970-01-01T00:00:00.000Z", "event": "login_succeeded", "user": "alice",
                "client_ip": "192.0.2.7", "user_agent": "curl/8 \"x\"", "request_id": "rid",
                "session": "ab".repeat(16)
            })
        );
        let mut buf = Vec::new();
        Record::new(AuditEvent::ConfigReloaded)
            .reason("ok")
            .format(&mut buf, std::time::SystemTime::UNIX_EPOCH);
        let value: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"time": "1970-01-01T00:00:00.000Z", "event": "config_reloaded", "reason": "ok"})
        );
    }

    #[test]
    fn event_names_are_the_documented_ones() {
        let names: Vec<&str> = AuditEvent::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(
            names,
            [
                "login_succeeded",
                "login_failed",
                "token_refreshed",
                "refresh_reuse_detected",
                "logout",
                "sessions_revoked",
                "user_created",
                "user_changed",
                "user_deleted",
                "totp_enrolled",
                "totp_removed",
                "config_reloaded",
            ]
        );
    }
}
