//! Cursor pagination over a list held in order: each item has a unique key that sorts as the
//! list does; a cursor is the (opaque, hex) key of the last item of a page, and the next page
//! starts after it, so items added or removed between two pages never make one repeat or skip
//! another that stayed.

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
}
