//! A line sink that never blocks its callers: lines go into a bounded
//! in-memory buffer, and one dedicated thread writes what has gathered
//! (for 50 ms, or 64 KiB) in one large write. Waking that thread for
//! every line would cost a futex wake and, on a busy core, a context
//! switch per request: more than the line itself. The access log and the audit trail each have one.
//!
//! When the buffer holds its limit of lines (the disk is slow, or nobody
//! reads the pipe), a new line is dropped and counted; the caller carries
//! on at once. A request must never wait on its log line: with back-pressure
//! a full pipe would stall every request, and the log would have taken the
//! gateway down with it.
//!
//! A file target is opened for appending (created `0640`) and reopened on
//! [`LineSink::reopen`], which SIGHUP calls: after logrotate renames the
//! file, the next batch goes to a new file under the old name.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long the writer lets lines gather after the first of a batch: a
/// line reaches its file at most this late.
const GATHER: Duration = Duration::from_millis(50);
/// A batch this large is written at once.
const BATCH_BYTES: usize = 64 * 1024;

/// Where the lines of a sink go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    Stdout,
    Stderr,
    /// Appended to; reopened on SIGHUP.
    File(PathBuf),
}

/// The lines waiting for the writer thread.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: usize,
    /// The writer thread is writing a batch (what `flush` waits for).
    writing: bool,
    /// The writer thread waits for lines: a push must wake it. Otherwise
    /// it finds them after its write, and the push costs no syscall.
    writer_waiting: bool,
    /// Threads in [`LineSink::flush`], woken after each batch.
    flushing: usize,
    reopen: bool,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// The writer waits on it for lines; `flush` for an empty buffer.
    changed: Condvar,
    limit: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves only bytes behind: the
        // buffer is still a valid one.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The producer side; dropping it lets the writer finish what is buffered
/// and end.
#[derive(Debug)]
pub struct LineSink {
    shared: Arc<Shared>,
    target: SinkTarget,
}

/// What a [`LineSink::push`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The buffer was full: the line is gone.
    Dropped,
}

impl LineSink {
    /// Opens `target` (a file now, so a path that cannot be written refuses
    /// the start) and starts the writer thread; at most `limit` lines wait.
    pub fn open(target: SinkTarget, limit: usize, name: &str) -> std::io::Result<LineSink> {
        let out = Output::open(&target)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            changed: Condvar::new(),
            limit: limit.max(1),
        });
        let writer = shared.clone();
        let thread_target = target.clone();
        std::thread::Builder::new()
            .name(format!("authgate-{name}"))
            .spawn(move || write_loop(&writer, out, &thread_target))?;
        Ok(LineSink { shared, target })
    }

    pub fn target(&self) -> &SinkTarget {
        &self.target
    }

    /// Appends one line, written by `format` into the shared buffer (a
    /// newline follows it); drops it when the buffer is full.
    pub fn push(&self, format: impl FnOnce(&mut Vec<u8>)) -> Pushed {
        let mut pending = self.shared.lock();
        if pending.lines >= self.shared.limit {
            return Pushed::Dropped;
        }
        format(&mut pending.bytes);
        pending.bytes.push(b'\n');
        pending.lines += 1;
        // The writer sleeps until a batch is worth a write: woken for the
        // first line, and again once the batch is large.
        let wake =
            pending.writer_waiting && (pending.lines == 1 || pending.bytes.len() >= BATCH_BYTES);
        if wake {
            pending.writer_waiting = false;
        }
        drop(pending);
        if wake {
            self.shared.changed.notify_all();
        }
        Pushed::Queued
    }

    /// Makes the writer reopen a file target before its next write.
    pub fn reopen(&self) {
        if matches!(self.target, SinkTarget::File(_)) {
            self.shared.lock().reopen = true;
            self.shared.changed.notify_all();
        }
    }

    /// Waits (at most `timeout`) until every buffered line is written;
    /// `false` if some were not by then.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut pending = self.shared.lock();
        pending.flushing += 1;
        // The writer may be gathering a batch: it writes now.
        self.shared.changed.notify_all();
        let mut done = true;
        while pending.lines > 0 || pending.writing || pending.reopen {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                done = false;
                break;
            };
            pending = self
                .shared
                .changed
                .wait_timeout(pending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        pending.flushing -= 1;
        done
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

enum Output {
    Stdout,
    Stderr,
    File(File),
}

impl Output {
    fn open(target: &SinkTarget) -> std::io::Result<Output> {
        Ok(match target {
            SinkTarget::Stdout => Output::Stdout,
            SinkTarget::Stderr => Output::Stderr,
            SinkTarget::File(path) => Output::File(open_append(path)?),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        // The standard streams unlocked and unbuffered beyond this batch:
        // one write per batch.
        match self {
            Output::Stdout => std::io::stdout().lock().write_all(bytes),
            Output::Stderr => std::io::stderr().lock().write_all(bytes),
            Output::File(file) => file.write_all(bytes),
        }
    }
}

/// Opens `path` for appending, creating it readable by the owner's group
/// only (`0640`): log lines name users and their addresses.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn write_loop(shared: &Shared, mut out: Output, target: &SinkTarget) {
    let mut batch = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.lines == 0 && !pending.reopen && !pending.closed {
            pending.writer_waiting = true;
            pending = shared
                .changed
                .wait(pending)
                .unwrap_or_else(|e| e.into_inner());
        }
        // A first line came: let more gather, so that a busy gateway
        // writes (and wakes this thread) once per batch, not per line.
        let deadline = Instant::now() + GATHER;
        while pending.bytes.len() < BATCH_BYTES
            && pending.flushing == 0
            && !pending.reopen
            && !pending.closed
        {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            pending.writer_waiting = true;
            pending = shared
                .changed
                .wait_timeout(pending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        pending.writer_waiting = false;
        let reopen = std::mem::take(&mut pending.reopen);
        let closed = pending.closed;
        batch.clear();
        std::mem::swap(&mut batch, &mut pending.bytes);
        pending.lines = 0;
        pending.writing = true;
        drop(pending);
        if reopen {
            if let SinkTarget::File(path) = target {
                match open_append(path) {
                    Ok(file) => out = Output::File(file),
                    // The old file (renamed, or not) keeps the lines.
                    Err(e) => {
                        let _ = writeln!(
                            std::io::stderr(),
                            "authgate: cannot reopen the log file: {e}"
                        );
                    }
                }
            }
        }
        if !batch.is_empty() {
            if let Err(e) = out.write_all(&batch) {
                // Where else to say it: the log is what failed. Not
                // `eprintln!`, which panics when stderr is what failed
                // (a closed pipe), and would end this thread.
                let _ = writeln!(std::io::stderr(), "authgate: log lines lost: {e}");
            }
        }
        // A batch that grew huge once (a stall) is not kept at that size.
        if batch.capacity() > 4 << 20 {
            batch = Vec::new();
        }
        let mut pending = shared.lock();
        pending.writing = false;
        let (flushing, done) = (pending.flushing > 0, closed && pending.lines == 0);
        drop(pending);
        if flushing {
            shared.changed.notify_all();
        }
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn lines_reach_the_file_in_order_and_it_is_created_0640() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let sink = LineSink::open(SinkTarget::File(path.clone()), 100, "test").unwrap();
        for i in 0..50 {
            assert_eq!(
                sink.push(|b| b.extend_from_slice(format!("line {i}").as_bytes())),
                Pushed::Queued
            );
        }
        assert!(sink.flush(Duration::from_secs(5)));
        let text = read(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 50);
        assert_eq!(lines[0], "line 0");
        assert_eq!(lines[49], "line 49");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "{mode:o}");
    }

    #[test]
    fn reopen_follows_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let sink = LineSink::open(SinkTarget::File(path.clone()), 100, "test").unwrap();
        sink.push(|b| b.extend_from_slice(b"before"));
        assert!(sink.flush(Duration::from_secs(5)));
        std::fs::rename(&path, dir.path().join("x.log.1")).unwrap();
        sink.reopen();
        sink.push(|b| b.extend_from_slice(b"after"));
        assert!(sink.flush(Duration::from_secs(5)));
        assert_eq!(read(&dir.path().join("x.log.1")), "before\n");
        assert_eq!(read(&path), "after\n");
    }

    #[test]
    fn a_full_buffer_drops_instead_of_waiting() {
        // A pipe nobody reads: the writer blocks on its first write, the
        // buffer fills, and pushing goes on without waiting.
        let (reader, writer) = std::io::pipe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        // Writing to the pipe through /proc keeps a blocking file target.
        use std::os::fd::AsRawFd;
        std::os::unix::fs::symlink(format!("/proc/self/fd/{}", writer.as_raw_fd()), &fifo).unwrap();
        let sink = LineSink::open(SinkTarget::File(fifo), 10, "test").unwrap();
        // Ten lines are more than the pipe holds (64 KiB).
        let line = vec![b'x'; 16 * 1024];
        let started = Instant::now();
        let mut dropped = 0;
        for _ in 0..1000 {
            if sink.push(|b| b.extend_from_slice(&line)) == Pushed::Dropped {
                dropped += 1;
            }
        }
        assert!(dropped >= 980, "{dropped}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!sink.flush(Duration::from_millis(50)));
        drop(reader);
    }
}
