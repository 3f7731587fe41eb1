//! Cursor pagination over a list held in order: each item has a unique key that sorts as the
//! list does; a cursor is the (opaque, hex) key of the last item of a page, and the next page
//! starts after it, so items added or removed between two pages never make one repeat or skip
//! another that stayed.
//!
//! Logs the store keeps by id, newest first (the audit log, alert history, notifications), are
//! paged by [`below`]: a cursor holds the id of a page's last entry, and the next page reads the
//! ids below it.

use super::ApiError;

/// Items per page when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// Items per page at most.
pub const MAX_LIMIT: usize = 1000;

/// The page size asked for in parameter `limit`.
pub fn limit(asked: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = asked else {
        return Ok(DEFAULT_LIMIT);
    };
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_parameter(
            "limit",
            format!("query parameter `limit`: `{text}` is not a number from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// The key a cursor holds.
pub fn decode(cursor: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_parameter(
            "cursor",
            format!("query parameter `cursor`: `{cursor}` is not a cursor this list gave"),
        )
    };
    if !cursor.len().is_multiple_of(2) || cursor.is_empty() {
        return Err(bad());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    // Any position is a place to start from, even one no page gave.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The cursor of a key.
pub fn encode(key: &str) -> String {
    outpost_common::event::hex(key.as_bytes())
}

/// One page of `items` (sorted by `key`, keys unique) after `cursor`, and the next cursor when
/// more may follow.
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let after = cursor.map(decode).transpose()?;
    let mut page: Vec<T> = items
        .into_iter()
        .filter(|item| after.as_ref().is_none_or(|a| key(item) > *a))
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next = if more {
        page.last().map(|last| encode(&key(last)))
    } else {
        None
    };
    Ok((page, next))
}

/// Entries of a log looked at for one page at most, so that a filter that matches little costs
/// a bounded amount per request.
pub const SCAN_PER_PAGE: usize = 50_000;

/// The id a cursor of a log paged by [`below`] holds (`None`: from the newest entry).
pub fn id_cursor(cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(c) = cursor else {
        return Ok(None);
    };
    decode(c)?.parse::<i64>().map(Some).map_err(|_| {
        ApiError::bad_parameter(
            "cursor",
            format!("query parameter `cursor`: `{c}` is not a cursor this list gave"),
        )
    })
}

/// One page of a log kept newest first by id: `read(before, n)` answers at most `n` entries with
/// an id below `before` (any id when `None`), newest first. Keeps the entries `keep` accepts
/// until `limit`, and answers the cursor of the next page when more may follow. After
/// [`SCAN_PER_PAGE`] entries looked at, the page ends where the scan stopped: it may be short,
/// even empty, and still have a next cursor.
pub fn below<T, E>(
    before: Option<i64>,
    limit: usize,
    id: impl Fn(&T) -> i64,
    keep: impl Fn(&T) -> bool,
    mut read: impl FnMut(Option<i64>, usize) -> Result<Vec<T>, E>,
) -> Result<(Vec<T>, Option<String>), E> {
    let cursor = |id: i64| encode(&id.to_string());
    // One more than a page: whether it comes says whether a next page exists.
    let chunk = limit + 1;
    let mut items: Vec<T> = Vec::new();
    let mut before = before;
    let mut looked = 0;
    loop {
        let entries = read(before, chunk)?;
        let exhausted = entries.len() < chunk;
        for entry in entries {
            looked += 1;
            before = Some(id(&entry));
            if keep(&entry) {
                if items.len() == limit {
                    let next = items.last().map(|last| cursor(id(last)));
                    return Ok((items, next));
                }
                items.push(entry);
            }
            if looked >= SCAN_PER_PAGE {
                return Ok((items, before.map(cursor)));
            }
        }
        if exhausted {
            return Ok((items, None));
        }
    }
}

/// A key part that sorts newest first: the time subtracted from the largest one, zero-padded.
pub fn newest_first(time_ns: Option<i64>) -> String {
    // From 1 (the latest time) up; unknown times sort last.
    let newest = u64::try_from(i64::MAX).unwrap_or(u64::MAX);
    let t = time_ns.map_or(u64::MAX, |t| newest - u64::try_from(t).unwrap_or(0) + 1);
    format!("{t:020}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other_across_inserts_and_removals() {
        let all: Vec<String> = ["a", "b", "c", "d", "e"].map(str::to_owned).to_vec();
        let key = |s: &String| s.clone();
        let (first, next) = page(all.clone(), key, None, 2).unwrap();
        assert_eq!(first, ["a", "b"]);
        // "aa" added before the cursor, "c" removed: the next page neither repeats nor skips.
        let changed: Vec<String> = ["a", "aa", "b", "d", "e"].map(str::to_owned).to_vec();
        let (second, next) = page(changed.clone(), key, next.as_deref(), 2).unwrap();
        assert_eq!(second, ["d", "e"]);
        assert_eq!(next, None);
        assert_eq!(
            page(changed, key, Some(&encode("e")), 2).unwrap().0,
            Vec::<String>::new()
        );
    }

    #[test]
    fn bad_limits_and_cursors_name_their_parameter() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some("5")).unwrap(), 5);
        for bad in ["0", "1001", "-1", "ten"] {
            let e = limit(Some(bad)).unwrap_err();
            assert_eq!(e.details["parameter"], "limit", "{bad}");
        }
        for bad in ["", "abc", "zz", "f"] {
            let e = decode(bad).unwrap_err();
            assert_eq!(e.details["parameter"], "cursor", "{bad}");
        }
        assert_eq!(decode(&encode("web-01")).unwrap(), "web-01");
        assert!(newest_first(Some(2)) < newest_first(Some(1)));
        assert!(newest_first(Some(0)) < newest_first(None));
    }

    /// A log of ids `n` down to 1, newest first, read as a store would.
    fn log(n: i64) -> impl FnMut(Option<i64>, usize) -> Result<Vec<i64>, ()> {
        move |before, max| {
            let top = before.map_or(n, |b| b - 1);
            Ok((1..=top).rev().take(max).collect())
        }
    }

    #[test]
    fn logs_page_below_the_last_id_with_or_without_a_filter() {
        let id = |e: &i64| *e;
        let (first, next) = below(None, 3, id, |_| true, log(7)).unwrap();
        assert_eq!(first, [7, 6, 5]);
        let before = id_cursor(next.as_deref()).unwrap();
        assert_eq!(before, Some(5));
        let (second, next) = below(before, 4, id, |_| true, log(7)).unwrap();
        assert_eq!(second, [4, 3, 2, 1]);
        assert_eq!(next, None);
        // Even ids only: reads on past what the filter drops.
        let (even, next) = below(None, 2, id, |e| e % 2 == 0, log(7)).unwrap();
        assert_eq!(even, [6, 4]);
        let (rest, next) = below(
            id_cursor(next.as_deref()).unwrap(),
            2,
            id,
            |e| e % 2 == 0,
            log(7),
        )
        .unwrap();
        assert_eq!((rest, next), (vec![2], None));
        // A filter that matches nothing stops after SCAN_PER_PAGE entries, saying where.
        let huge = i64::try_from(SCAN_PER_PAGE).unwrap() + 10;
        let (none, next) = below(None, 5, id, |_| false, log(huge)).unwrap();
        assert!(none.is_empty());
        assert_eq!(id_cursor(next.as_deref()).unwrap(), Some(11));
        for bad in ["zz", "3a"] {
            let e = id_cursor(Some(bad)).unwrap_err();
            assert_eq!(e.details["parameter"], "cursor", "{bad}");
        }
    }
}
