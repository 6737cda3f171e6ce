//! Logging: one subscriber for the process, text or JSON, level from `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let spec = filter_spec(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(filter_spec(None)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// `RUST_LOG` (default `info`), with rustls held to errors unless it names
/// rustls itself: rustls warns about what a client sent, such as the IP
/// address that OpenSSL clients (curl, wrk) put in SNI when they connect
/// by address, which made one log line per handshake, written at the
/// client's pace (bench/run.sh case 8).
fn filter_spec(rust_log: Option<&str>) -> String {
    let spec = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    if spec.contains("rustls") {
        spec.to_string()
    } else {
        format!("{spec},rustls=error")
    }
}

#[cfg(test)]
mod tests {
    use super::filter_spec;

    #[test]
    fn rustls_is_held_to_errors_unless_named() {
        assert_eq!(filter_spec(None), "info,rustls=error");
        assert_eq!(filter_spec(Some("")), "info,rustls=error");
        assert_eq!(filter_spec(Some("warn")), "warn,rustls=error");
        assert_eq!(
            filter_spec(Some("debug,authgate=trace")),
            "debug,authgate=trace,rustls=error"
        );
        assert_eq!(filter_spec(Some("info,rustls=debug")), "info,rustls=debug");
    }
}
