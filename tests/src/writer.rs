//! A thread appending numbered lines to a file, a few at a time, until stopped: the steady
//! stream an application writes, for tests that follow every line to the store.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Appends the lines `line(0)`, `line(1)`, … (each with its newline) to a file.
#[derive(Debug)]
pub struct LineWriter {
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How a [`LineWriter`] writes.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Lines per write.
    pub lines: u64,
    /// The pause between writes: a workload, not a synchronisation.
    pub pause: Duration,
    /// Open the file by name again before each write, as an application told to reopen its log
    /// (logrotate's postrotate) does, sooner.
    pub reopen: bool,
}

impl LineWriter {
    pub fn start(
        path: PathBuf,
        pace: Pace,
        line: impl Fn(u64) -> String + Send + 'static,
    ) -> LineWriter {
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (written.clone(), stop.clone());
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("the writer opens the log")
        };
        let thread = std::thread::spawn(move || {
            let mut file = open(&path);
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                if pace.reopen {
                    file = open(&path);
                }
                let mut text = String::new();
                for _ in 0..pace.lines {
                    text.push_str(&line(n));
                    text.push('\n');
                    n += 1;
                }
                file.write_all(text.as_bytes()).expect("the writer appends");
                w.store(n, Ordering::Relaxed);
                std::thread::sleep(pace.pause);
            }
        });
        LineWriter {
            written,
            stop,
            thread: Some(thread),
        }
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Stops the writer; the number of lines written.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the writer thread ends");
        }
        self.written()
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
