//! Logging: one subscriber for the process, text or JSON, level from
//! `RUST_LOG`, written to stderr by a thread of its own through a
//! [`LineSink`]. An event is formatted on the thread that raised it and
//! queued; it never waits for stderr. When nobody reads a piped stderr (or
//! a container runtime falls behind), the queue fills, further lines are
//! dropped and counted in `authgate_log_lines_dropped_total`, and requests
//! go on: the default access log (`[access_log] target = "log"`) is one
//! of these lines per request.

use std::io::{self, IsTerminal};
use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use super::metrics;
use super::sink::{LineSink, Pushed, SinkTarget};
use crate::config::LogFormat;

/// The process log's sink, once [`init`] has made it.
static SINK: OnceLock<LineSink> = OnceLock::new();

/// Installs the subscriber; at most `queue` lines wait for stderr.
pub fn init(format: LogFormat, queue: usize) {
    let spec = filter_spec(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(filter_spec(None)));
    let sink = match SINK.get() {
        Some(sink) => Some(sink),
        None => match LineSink::open(SinkTarget::Stderr, queue, "log") {
            Ok(sink) => Some(SINK.get_or_init(|| sink)),
            Err(e) => {
                // Only a thread that cannot be started: log as before,
                // straight to stderr, rather than not at all.
                eprintln!("warning: the log writer thread did not start ({e}); logging to stderr directly");
                None
            }
        },
    };
    // Colours for a terminal only: a file or a log shipper would keep the
    // escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(LogWriter(sink));
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The process log's writer, once [`init`] has made it: the access log's
/// `stderr` target queues its lines there, so one thread writes stderr and
/// no two batches interleave in a pipe.
pub fn sink() -> Option<&'static LineSink> {
    SINK.get()
}

/// Writes what the log holds (waiting at most `timeout`): the process is
/// about to end.
pub fn flush(timeout: Duration) {
    if let Some(sink) = SINK.get() {
        sink.flush(timeout);
    }
}

/// Hands each event's line to the sink (or, without one, to stderr).
#[derive(Clone, Copy)]
struct LogWriter(Option<&'static LineSink>);

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            sink: self.0,
            partial: Vec::new(),
        }
    }
}

/// One event's bytes. The formatter writes a whole line at once, which
/// goes to the sink as it is; anything written in pieces is gathered and
/// queued when the writer is dropped, at the event's end.
struct EventWriter {
    sink: Option<&'static LineSink>,
    partial: Vec<u8>,
}

impl EventWriter {
    fn queue(sink: &LineSink, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if sink.push(|buf| buf.extend_from_slice(line)) == Pushed::Dropped {
            metrics::get().log_line_dropped();
        }
    }
}

impl io::Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let Some(sink) = self.sink else {
            return io::stderr().write(bytes);
        };
        if self.partial.is_empty() && bytes.ends_with(b"\n") {
            Self::queue(sink, bytes);
        } else {
            self.partial.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if let (Some(sink), false) = (self.sink, self.partial.is_empty()) {
            Self::queue(sink, &self.partial);
        }
    }
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
