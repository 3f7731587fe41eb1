//! The journalctl child process: its stdout read by the source, its stderr kept as a short
//! tail that explains why it exited.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::collectors::logs::lines::{Line, LineSplitter};

/// Lines of stderr kept to explain an exit.
const TAIL_LINES: usize = 4;

/// Bytes of one stderr line kept.
const TAIL_LINE_BYTES: usize = 512;

/// How long an exit may take to be reaped, and its stderr to close, once stdout has closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// A running `journalctl`, killed when dropped.
#[derive(Debug)]
pub struct Journalctl {
    program: PathBuf,
    child: Child,
    stdout: ChildStdout,
    /// Reads stderr to its end (so journalctl never blocks on it) and returns its tail.
    stderr: JoinHandle<String>,
}

impl Journalctl {
    /// Starts `program args` with stdout and stderr piped and no stdin.
    pub fn spawn(program: &Path, args: &[OsString]) -> io::Result<Journalctl> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        // Both were just set to piped, so both are there.
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(io::Error::other("journalctl started without its pipes"));
        };
        Ok(Journalctl {
            program: program.to_owned(),
            child,
            stdout,
            stderr: tokio::spawn(tail_of(stderr)),
        })
    }

    /// Reads the next bytes of stdout into `buf`; 0 once it closed. Cancel-safe.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdout.read(buf).await
    }

    /// Waits for journalctl to exit after its stdout closed (killing it if it does not), and
    /// says how it ended, with the tail of its stderr.
    pub async fn finish(mut self) -> String {
        let status = match tokio::time::timeout(EXIT_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("an unknown status ({e})"),
            Err(_) => {
                let _ = self.child.kill().await;
                format!("its output closed and it did not exit within {EXIT_GRACE:?}")
            }
        };
        let tail = tokio::time::timeout(EXIT_GRACE, &mut self.stderr)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let mut reason = format!("{} exited: {status}", self.program.display());
        if !tail.is_empty() {
            reason.push_str(": ");
            reason.push_str(&tail);
        }
        reason
    }
}

impl Drop for Journalctl {
    fn drop(&mut self) {
        // The child is killed on drop; its stderr then closes and the reader ends by itself.
        // Abort it anyway so that nothing outlives the source.
        self.stderr.abort();
    }
}

async fn tail_of(mut stderr: ChildStderr) -> String {
    let mut tail = Tail::new(TAIL_LINES, TAIL_LINE_BYTES);
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stderr.read(&mut buf).await {
        for line in tail.push(&buf[..n]) {
            debug!(line, "journalctl wrote on stderr");
        }
    }
    tail.finish()
}

/// The last lines of a stream, each cut to a length, so whatever a program writes costs a
/// bounded amount of memory.
#[derive(Debug)]
pub struct Tail {
    max_lines: usize,
    lines: VecDeque<String>,
    splitter: LineSplitter,
}

impl Tail {
    pub fn new(max_lines: usize, max_line_bytes: usize) -> Tail {
        Tail {
            max_lines,
            lines: VecDeque::new(),
            splitter: LineSplitter::new(max_line_bytes, 0),
        }
    }

    /// Takes the next bytes; returns the lines they complete (blank ones left out).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut complete = Vec::new();
        self.splitter.push(bytes, &mut complete);
        let complete: Vec<String> = complete.into_iter().filter_map(trimmed).collect();
        for line in &complete {
            self.keep(line.clone());
        }
        complete
    }

    /// The last lines, an unfinished one included, joined with `; `.
    pub fn finish(mut self) -> String {
        if let Some(line) = self.splitter.finish_partial().and_then(trimmed) {
            self.keep(line);
        }
        Vec::from(self.lines).join("; ")
    }

    fn keep(&mut self, line: String) {
        if self.lines.len() == self.max_lines {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// A line's text without surrounding blanks; `None` if nothing is left.
fn trimmed(line: Line) -> Option<String> {
    let text = line.text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_keeps_the_last_lines_cut_short() {
        let mut t = Tail::new(2, 10);
        assert_eq!(t.push(b"one\n\ntw"), ["one"]);
        assert_eq!(t.push(b"o\nthree is long\nfour"), ["two", "three is l"]);
        assert_eq!(t.finish(), "three is l; four");
        assert_eq!(Tail::new(2, 10).finish(), "");
    }

    #[tokio::test]
    async fn an_exit_is_explained_with_the_end_of_stderr() {
        let args: Vec<OsString> = [
            "-c",
            "echo entry; echo 'Failed to open /x: No such file or directory' >&2; exit 1",
        ]
        .map(OsString::from)
        .to_vec();
        let mut j = Journalctl::spawn(Path::new("/bin/sh"), &args).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match j.read(&mut buf).await.unwrap() {
                0 => break,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(out, b"entry\n");
        assert_eq!(
            j.finish().await,
            "/bin/sh exited: exit status: 1: Failed to open /x: No such file or directory"
        );
    }

    #[tokio::test]
    async fn a_program_that_is_not_there_cannot_start() {
        let e = Journalctl::spawn(Path::new("/nonexistent/journalctl"), &[]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
