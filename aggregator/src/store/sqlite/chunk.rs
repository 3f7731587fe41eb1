//! How a run of one series' metric points is packed into a `metric_chunks` row: three columns
//! (times, values, event ids), each compressed with Pcodec, which finds the deltas of regular
//! timestamps and of growing ids and the shared bits of nearby values on its own. A series
//! sampled every 10 s takes about 7 bytes a point for a chunk of 180 points, against the 20 to 30
//! a row per point costs before any index.
//!
//! Layout: a version byte, the point count (u32, little endian), then the three compressed
//! columns, each behind its length (u32, little endian). Decoding checks every length, so a
//! damaged blob is an error naming what is wrong, never a panic or a wrong point.

use pco::ChunkConfig;
use pco::standalone::{simple_compress, simple_decompress};

/// The one layout written so far.
const VERSION: u8 = 1;

/// One series' points in a chunk, sorted by time then id.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Points {
    pub times: Vec<i64>,
    pub values: Vec<f64>,
    pub ids: Vec<i64>,
}

impl Points {
    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn push(&mut self, time_ns: i64, value: f64, id: i64) {
        self.times.push(time_ns);
        self.values.push(value);
        self.ids.push(id);
    }

    /// Sorts by time, then id: the order queries read points in.
    pub fn sort(&mut self) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| (self.times[i], self.ids[i]));
        let pick = |column: &[i64]| order.iter().map(|&i| column[i]).collect::<Vec<_>>();
        let times = pick(&self.times);
        let ids = pick(&self.ids);
        self.values = order.iter().map(|&i| self.values[i]).collect();
        self.times = times;
        self.ids = ids;
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ChunkError {
    #[error("metric chunk: {0}")]
    Damaged(String),
    #[error("metric chunk: {0}")]
    Codec(#[from] pco::errors::PcoError),
}

fn damaged(what: impl Into<String>) -> ChunkError {
    ChunkError::Damaged(what.into())
}

/// Packs `points` (at most `u32::MAX` of them).
pub(super) fn encode(points: &Points) -> Result<Vec<u8>, ChunkError> {
    let n = u32::try_from(points.len()).map_err(|_| damaged("too many points for one chunk"))?;
    let config = ChunkConfig::default();
    let mut out = Vec::with_capacity(16 + points.len() * 8);
    out.push(VERSION);
    out.extend_from_slice(&n.to_le_bytes());
    for column in [
        simple_compress(&points.times, &config)?,
        simple_compress(&points.values, &config)?,
        simple_compress(&points.ids, &config)?,
    ] {
        let len = u32::try_from(column.len()).map_err(|_| damaged("column too long"))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&column);
    }
    Ok(out)
}

/// Unpacks times and values; ids only when `with_ids` (queries do not need them).
pub(super) fn decode(blob: &[u8], with_ids: bool) -> Result<Points, ChunkError> {
    let mut rest = blob;
    let version = take(&mut rest, 1, "version")?[0];
    if version != VERSION {
        return Err(damaged(format!("unknown layout version {version}")));
    }
    let n = read_u32(&mut rest, "point count")? as usize;
    let mut column = |what: &str| -> Result<&[u8], ChunkError> {
        let len = read_u32(&mut rest, what)? as usize;
        take(&mut rest, len, what)
    };
    let times = column("times")?;
    let values = column("values")?;
    let ids = column("ids")?;
    let points = Points {
        times: simple_decompress(times)?,
        values: simple_decompress(values)?,
        ids: if with_ids {
            simple_decompress(ids)?
        } else {
            Vec::new()
        },
    };
    if points.times.len() != n || points.values.len() != n || (with_ids && points.ids.len() != n) {
        return Err(damaged(format!(
            "{n} points announced, columns hold {}/{}/{}",
            points.times.len(),
            points.values.len(),
            points.ids.len()
        )));
    }
    Ok(points)
}

fn take<'b>(rest: &mut &'b [u8], len: usize, what: &str) -> Result<&'b [u8], ChunkError> {
    if rest.len() < len {
        return Err(damaged(format!(
            "cut short in {what} ({len} bytes wanted, {} left)",
            rest.len()
        )));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

fn read_u32(rest: &mut &[u8], what: &str) -> Result<u32, ChunkError> {
    let bytes = take(rest, 4, what)?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampled(n: usize) -> Points {
        let mut p = Points::default();
        let mut state = 7u64;
        for i in 0..n {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let jitter = ((state >> 40) % 3_000_000) as i64;
            let fraction = f64::from(((state >> 20) % 100_000) as f32 / 100_000.0);
            p.push(
                1_790_000_000_000_000_000 + i as i64 * 10_000_000_000 + jitter,
                fraction,
                1_000 + i as i64 * 61,
            );
        }
        p
    }

    #[test]
    fn points_come_back_bit_for_bit_including_odd_floats() {
        let mut p = sampled(100);
        for (i, v) in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            f64::MIN_POSITIVE,
        ]
        .into_iter()
        .enumerate()
        {
            p.values[i * 7] = v;
        }
        p.times[3] = i64::MIN;
        p.times[4] = i64::MAX;
        let back = decode(&encode(&p).unwrap(), true).unwrap();
        assert_eq!(back.times, p.times);
        assert_eq!(back.ids, p.ids);
        let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.values), bits(&p.values));
        let without_ids = decode(&encode(&p).unwrap(), false).unwrap();
        assert!(without_ids.ids.is_empty());
        assert_eq!(without_ids.times, p.times);
    }

    #[test]
    fn a_series_sampled_every_ten_seconds_packs_well_under_twelve_bytes_a_point() {
        for n in [1, 2, 180] {
            let p = sampled(n);
            let blob = encode(&p).unwrap();
            assert_eq!(decode(&blob, true).unwrap(), p);
            if n == 180 {
                let per_point = blob.len() as f64 / n as f64;
                assert!(per_point < 12.0, "{per_point} bytes a point");
            }
        }
        let empty = Points::default();
        assert_eq!(decode(&encode(&empty).unwrap(), true).unwrap(), empty);
    }

    #[test]
    fn damaged_blobs_are_errors_naming_the_damage() {
        let blob = encode(&sampled(50)).unwrap();
        for (bad, expected) in [
            (Vec::new(), "cut short in version"),
            (vec![9, 0, 0, 0, 0], "unknown layout version 9"),
            (blob[..7].to_vec(), "cut short in times"),
            (blob[..blob.len() - 1].to_vec(), "cut short in ids"),
        ] {
            let err = decode(&bad, true).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
        let mut wrong_count = blob.clone();
        wrong_count[1] = 49;
        let err = decode(&wrong_count, true).unwrap_err().to_string();
        assert!(err.contains("49 points announced"), "{err}");
        let mut garbage = blob;
        let len = garbage.len();
        garbage[9..len - 4].fill(0xA5);
        assert!(decode(&garbage, true).is_err());
    }

    #[test]
    fn sorting_orders_by_time_then_id_and_keeps_rows_together() {
        let mut p = Points::default();
        p.push(30, 3.0, 5);
        p.push(10, 1.0, 9);
        p.push(10, 0.5, 2);
        p.sort();
        assert_eq!(p.times, [10, 10, 30]);
        assert_eq!(p.ids, [2, 9, 5]);
        assert_eq!(p.values, [0.5, 1.0, 3.0]);
    }
}
