//! What a set of stored synthetic sequence numbers says against the expected `0..total`.

use std::fmt;

/// Repeats and gaps at most listed in a report; the counts are always exact.
const LISTED: usize = 10;

/// Stored synthetic numbers compared with `0..total`: counts, repeats and gaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqReport {
    pub total: u64,
    /// Rows stored, repeats included.
    pub count: u64,
    /// Distinct numbers stored.
    pub distinct: u64,
    pub min: Option<u64>,
    pub max: Option<u64>,
    /// Numbers stored more than once, with how often (the first few).
    pub repeated: Vec<(u64, u64)>,
    /// How many numbers are stored more than once.
    pub repeated_count: u64,
    /// Numbers in `0..total` not stored, as inclusive ranges (the first few).
    pub gaps: Vec<(u64, u64)>,
    /// How many such ranges there are.
    pub gap_count: u64,
    /// How many numbers of `0..total` are not stored.
    pub missing: u64,
    /// Numbers at or above `total` (never produced, so never to be stored).
    pub out_of_range: u64,
    /// Numbers whose event does not carry the number in its body or value.
    pub mismatched: Vec<u64>,
}

impl SeqReport {
    /// `sorted`: the stored numbers in ascending order, repeats kept.
    pub fn new(sorted: &[u64], total: u64, mismatched: Vec<u64>) -> Self {
        let mut r = SeqReport {
            total,
            count: sorted.len() as u64,
            distinct: 0,
            min: sorted.first().copied(),
            max: sorted.last().copied(),
            repeated: Vec::new(),
            repeated_count: 0,
            gaps: Vec::new(),
            gap_count: 0,
            missing: 0,
            out_of_range: 0,
            mismatched,
        };
        let mut expected = 0u64;
        let mut i = 0;
        while i < sorted.len() {
            let n = sorted[i];
            let run = sorted[i..].iter().take_while(|&&m| m == n).count();
            i += run;
            r.distinct += 1;
            if run > 1 {
                r.repeated_count += 1;
                if r.repeated.len() < LISTED {
                    r.repeated.push((n, run as u64));
                }
            }
            if n >= total {
                r.out_of_range += 1;
                continue;
            }
            if n > expected {
                r.gap(expected, n - 1);
            }
            expected = n + 1;
        }
        if expected < total {
            r.gap(expected, total - 1);
        }
        r
    }

    fn gap(&mut self, from: u64, to: u64) {
        self.missing += to - from + 1;
        self.gap_count += 1;
        if self.gaps.len() < LISTED {
            self.gaps.push((from, to));
        }
    }

    /// Every number of `0..total` stored exactly once, and nothing else.
    pub fn is_exact(&self) -> bool {
        self.count == self.total
            && self.distinct == self.total
            && self.missing == 0
            && self.out_of_range == 0
            && self.mismatched.is_empty()
    }

    /// Nothing stored twice, nothing outside `0..total`, every event carrying its number.
    pub fn is_clean(&self) -> bool {
        self.repeated_count == 0 && self.out_of_range == 0 && self.mismatched.is_empty()
    }
}

impl fmt::Display for SeqReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rows, {} distinct of 0..{} (min {:?}, max {:?}); {} missing",
            self.count, self.distinct, self.total, self.min, self.max, self.missing
        )?;
        if !self.gaps.is_empty() {
            let gaps: Vec<String> = self
                .gaps
                .iter()
                .map(|(a, b)| format!("{a}..={b}"))
                .collect();
            write!(
                f,
                " (gaps {}{})",
                gaps.join(", "),
                more(self.gaps.len(), self.gap_count)
            )?;
        }
        if self.repeated_count > 0 {
            let reps: Vec<String> = self
                .repeated
                .iter()
                .map(|(n, c)| format!("{n}×{c}"))
                .collect();
            write!(
                f,
                "; {} stored more than once ({}{})",
                self.repeated_count,
                reps.join(", "),
                more(self.repeated.len(), self.repeated_count)
            )?;
        }
        if self.out_of_range > 0 {
            write!(f, "; {} beyond the total", self.out_of_range)?;
        }
        if !self.mismatched.is_empty() {
            let first: Vec<String> = self
                .mismatched
                .iter()
                .take(LISTED)
                .map(u64::to_string)
                .collect();
            write!(
                f,
                "; {} events do not carry their number ({}{})",
                self.mismatched.len(),
                first.join(", "),
                more(first.len(), self.mismatched.len() as u64)
            )?;
        }
        Ok(())
    }
}

/// ", ..." when only some of `total` things were listed.
fn more(listed: usize, total: u64) -> &'static str {
    if (listed as u64) < total { ", ..." } else { "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_when_every_number_is_there_once() {
        let r = SeqReport::new(&[0, 1, 2, 3], 4, vec![]);
        assert!(r.is_exact(), "{r}");
        assert_eq!((r.min, r.max), (Some(0), Some(3)));
    }

    #[test]
    fn gaps_repeats_and_strays_are_counted_and_listed() {
        let r = SeqReport::new(&[1, 2, 2, 2, 5, 9, 9], 8, vec![5]);
        assert!(!r.is_exact());
        assert!(!r.is_clean());
        assert_eq!(r.count, 7);
        assert_eq!(r.distinct, 4);
        assert_eq!(r.gaps, vec![(0, 0), (3, 4), (6, 7)]);
        assert_eq!(r.missing, 5);
        assert_eq!(r.repeated, vec![(2, 3), (9, 2)]);
        assert_eq!(r.out_of_range, 1);
        assert_eq!(
            r.to_string(),
            "7 rows, 4 distinct of 0..8 (min Some(1), max Some(9)); 5 missing \
             (gaps 0..=0, 3..=4, 6..=7); 2 stored more than once (2×3, 9×2); 1 beyond the total; \
             1 events do not carry their number (5)"
        );
    }

    #[test]
    fn long_lists_are_cut_and_say_so() {
        let every_other: Vec<u64> = (0..40).step_by(2).collect();
        let r = SeqReport::new(&every_other, 40, vec![]);
        assert_eq!((r.missing, r.gap_count, r.gaps.len()), (20, 20, LISTED));
        assert!(r.to_string().ends_with("17..=17, 19..=19, ...)"), "{r}");
    }

    #[test]
    fn nothing_stored_is_one_gap() {
        let r = SeqReport::new(&[], 3, vec![]);
        assert_eq!((r.missing, r.gaps.clone()), (3, vec![(0, 2)]));
        assert!(r.is_clean());
        assert!(!r.is_exact());
    }
}
