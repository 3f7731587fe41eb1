//! Bytes read from a file, cut into lines.
//!
//! [`LineSplitter`] takes the bytes of a file in whatever chunks the reads return and hands out
//! each complete line once, with the file offset just past it. Only complete lines are handed out,
//! so the offset a source checkpoints ([`LineSplitter::checkpoint`]) never falls inside a line: a
//! partial last line is read again, whole, after a restart.
//!
//! - A line ends at `\n`; a `\r` before it is dropped (CRLF files).
//! - A line longer than `max_line_bytes` is kept up to that many bytes (cut at a character
//!   boundary) and flagged [`Line::truncated`]; the rest of it is skipped without being held in
//!   memory, so a file with no newline at all costs at most `max_line_bytes`.
//! - Bytes that are not UTF-8 are replaced with U+FFFD and the line is flagged
//!   [`Line::invalid_utf8`].

/// One complete line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The text, without its line ending.
    pub text: String,
    /// The line was longer than the limit and only its start is kept.
    pub truncated: bool,
    /// Some bytes were not UTF-8 and were replaced.
    pub invalid_utf8: bool,
    /// Bytes the line took in the file, its ending included.
    pub file_bytes: u64,
    /// The file offset just past the line: where reading resumes after it.
    pub end_offset: u64,
}

impl Line {
    /// Bytes of the line cut off by the limit (its ending and a `\r` before it aside).
    pub fn dropped_bytes(&self) -> u64 {
        if self.truncated {
            self.file_bytes.saturating_sub(self.text.len() as u64 + 1)
        } else {
            0
        }
    }
}

/// Cuts a file's bytes into [`Line`]s; see the module documentation.
#[derive(Debug)]
pub struct LineSplitter {
    max_line_bytes: usize,
    /// The start of the current line, up to `max_line_bytes` (and a possible `\r`) of it.
    current: Vec<u8>,
    /// Bytes of the current line beyond what `current` keeps.
    skipped: u64,
    /// The offset just past the last complete line.
    checkpoint: u64,
}

impl LineSplitter {
    /// A splitter reading from `offset` on, keeping at most `max_line_bytes` (at least 1) of a
    /// line.
    pub fn new(max_line_bytes: usize, offset: u64) -> Self {
        LineSplitter {
            max_line_bytes: max_line_bytes.max(1),
            current: Vec::new(),
            skipped: 0,
            checkpoint: offset,
        }
    }

    /// Takes the next bytes of the file and appends every line they complete to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Line>) {
        while !chunk.is_empty() {
            let (part, complete) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            self.keep(part);
            match complete {
                Some(used) => {
                    out.push(self.finish_line(1));
                    chunk = &chunk[used..];
                }
                None => break,
            }
        }
    }

    /// The offset just past the last complete line: what a source may checkpoint.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Bytes read past [`LineSplitter::checkpoint`]: an unfinished last line.
    pub fn pending_bytes(&self) -> u64 {
        self.current.len() as u64 + self.skipped
    }

    /// Hands out the unfinished last line as if it were complete, when no more will come (a
    /// rotated-away file read to its end); `None` if there is none.
    pub fn finish_partial(&mut self) -> Option<Line> {
        (self.pending_bytes() > 0).then(|| self.finish_line(0))
    }

    /// Keeps what fits of `part` (a piece of the current line, without its `\n`); one byte more
    /// than the limit is kept so that a `\r` just before the `\n` is still seen and dropped.
    fn keep(&mut self, part: &[u8]) {
        let room = (self.max_line_bytes + 1).saturating_sub(self.current.len());
        let kept = part.len().min(room);
        self.current.extend_from_slice(&part[..kept]);
        self.skipped += (part.len() - kept) as u64;
    }

    /// Ends the current line; `ending` is the bytes of its line ending in the file (1 or 0).
    fn finish_line(&mut self, ending: u64) -> Line {
        let file_bytes = self.pending_bytes() + ending;
        if ending == 1 && self.skipped == 0 && self.current.last() == Some(&b'\r') {
            self.current.pop();
        }
        let truncated = self.current.len() > self.max_line_bytes || self.skipped > 0;
        if truncated {
            self.current.truncate(self.max_line_bytes);
            // Cut at a character boundary rather than leave half a character to be replaced.
            if let Err(e) = std::str::from_utf8(&self.current)
                && e.error_len().is_none()
            {
                self.current.truncate(e.valid_up_to());
            }
        }
        let (text, invalid_utf8) = match String::from_utf8(std::mem::take(&mut self.current)) {
            Ok(text) => (text, false),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
        };
        self.skipped = 0;
        self.checkpoint += file_bytes;
        Line {
            text,
            truncated,
            invalid_utf8,
            file_bytes,
            end_offset: self.checkpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn split(max: usize, chunks: &[&[u8]]) -> (Vec<Line>, LineSplitter) {
        let mut s = LineSplitter::new(max, 0);
        let mut out = Vec::new();
        for chunk in chunks {
            s.push(chunk, &mut out);
        }
        (out, s)
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_are_cut_at_newlines_whatever_the_chunks() {
        let (lines, s) = split(100, &[b"one\ntw", b"o\n", b"\nthr", b"ee"]);
        assert_eq!(texts(&lines), ["one", "two", ""]);
        assert_eq!(
            lines.iter().map(|l| l.end_offset).collect::<Vec<_>>(),
            [4, 8, 9]
        );
        // "three" has no newline yet: it is not handed out, and the checkpoint stays before it.
        assert_eq!((s.checkpoint(), s.pending_bytes()), (9, 5));
    }

    #[test]
    fn crlf_endings_are_dropped_and_a_lone_cr_is_kept() {
        let (lines, _) = split(100, &[b"dos\r", b"\nmac\rstill one\n\r\n"]);
        assert_eq!(texts(&lines), ["dos", "mac\rstill one", ""]);
        assert_eq!(lines[0].file_bytes, 5);
    }

    #[test]
    fn long_lines_are_truncated_flagged_and_not_held_in_memory() {
        let long = vec![b'x'; 10_000];
        let mut s = LineSplitter::new(8, 0);
        let mut out = Vec::new();
        for _ in 0..100 {
            s.push(&long, &mut out);
            assert!(s.current.len() <= 9, "{} bytes held", s.current.len());
        }
        s.push(b"\nshort\n", &mut out);
        assert_eq!(texts(&out), ["xxxxxxxx", "short"]);
        assert!(out[0].truncated && !out[1].truncated);
        assert_eq!(out[0].file_bytes, 1_000_001);
        assert_eq!(s.checkpoint(), 1_000_007);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_whole_even_with_crlf() {
        let (lines, _) = split(4, &[b"abcd\r\nabcde\r\n"]);
        assert_eq!(texts(&lines), ["abcd", "abcd"]);
        assert_eq!(
            lines.iter().map(|l| l.truncated).collect::<Vec<_>>(),
            [false, true]
        );
    }

    #[test]
    fn truncation_never_cuts_a_character_in_half() {
        // "é" is two bytes: a limit of 2 keeps "a", not "a" and half of "é".
        let (lines, _) = split(2, &["aéb\n".as_bytes()]);
        assert_eq!(lines[0].text, "a");
        assert!(lines[0].truncated && !lines[0].invalid_utf8);
    }

    #[test]
    fn invalid_utf8_is_replaced_and_flagged() {
        let (lines, _) = split(100, &[b"ok\n", b"bad \xff byte\n"]);
        assert_eq!(texts(&lines), ["ok", "bad \u{fffd} byte"]);
        assert_eq!(
            lines.iter().map(|l| l.invalid_utf8).collect::<Vec<_>>(),
            [false, true]
        );
    }

    #[test]
    fn an_unfinished_line_is_handed_out_only_when_asked() {
        let (mut lines, mut s) = split(100, &[b"a\nlast words"]);
        assert_eq!(texts(&lines), ["a"]);
        lines.extend(s.finish_partial());
        assert_eq!(texts(&lines), ["a", "last words"]);
        assert_eq!((s.checkpoint(), s.pending_bytes()), (12, 0));
        assert_eq!(s.finish_partial(), None);
    }

    #[test]
    fn offsets_continue_from_where_reading_resumed() {
        let mut s = LineSplitter::new(100, 1_000);
        let mut out = Vec::new();
        s.push(b"x\n", &mut out);
        assert_eq!(out[0].end_offset, 1_002);
    }

    proptest! {
        /// However the reads cut the file, the lines are the same as cutting it whole, each ends
        /// where the file says, and the checkpoint is just past the last newline.
        #[test]
        fn chunking_changes_nothing(
            content in prop::collection::vec(
                prop::sample::select(vec![b'a', b'\n', b'\r', 0xc3, 0xa9, 0xff]), 0..400),
            cuts in prop::collection::vec(0usize..400, 0..20),
            max in 1usize..12,
        ) {
            let (whole, _) = split(max, &[&content]);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= content.len()).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([content.len()]) {
                chunks.push(&content[from..c]);
                from = c;
            }
            let (pieces, s) = split(max, &chunks);
            prop_assert_eq!(&pieces, &whole);
            let last_newline = content.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            prop_assert_eq!(s.checkpoint(), last_newline as u64);
            prop_assert_eq!(s.checkpoint() + s.pending_bytes(), content.len() as u64);
            let mut offset = 0;
            for line in &pieces {
                offset += line.file_bytes;
                prop_assert_eq!(line.end_offset, offset);
                prop_assert_eq!(content[offset as usize - 1], b'\n');
                // Only a line longer than the limit (its ending aside) is truncated.
                prop_assert!(!line.truncated || line.file_bytes > max as u64 + 1);
                prop_assert!(!line.text.contains('\n'));
            }
        }
    }
}
