//! The times lazarus writes and reads, all UTC, through `jiff` (no hand-written
//! civil-date math). The formats are on-disk and registry contracts and must not
//! change:
//! - checkpoint `created` annotations: `2026-11-22T23:51:33.919Z` (milliseconds);
//! - time tags: `20261122T235133.919Z` (the same instant; sorts by time as a string);
//! - CRIU's `config.dump` `createdTime`: `2023-11-14T22:13:20Z` (seconds);
//! - runc log lines of `lazarus-runc`: `2026-11-22T23:51:33.919123Z` (microseconds).
//!
//! Fractions are truncated, never rounded up into the next second.

use std::time::SystemTime;

use jiff::Timestamp;
use jiff::tz::Offset;

const CREATED: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";
const TAG: &str = "%Y%m%dT%H%M%S%.3fZ";

fn timestamp(time: SystemTime) -> Timestamp {
    // Before 1970 or beyond jiff's range (year 9999): not a time lazarus meets; the epoch.
    Timestamp::try_from(time).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `time` as a `created` annotation and as a time tag: (`2026-11-22T23:51:33.919Z`, `20261122T235133.919Z`).
pub fn created_and_tag(time: SystemTime) -> (String, String) {
    let ts = timestamp(time);
    (ts.strftime(CREATED).to_string(), ts.strftime(TAG).to_string())
}

/// Nanoseconds since the epoch (CRI's `created_at`) in whole seconds: `2023-11-14T22:13:20Z`.
pub fn rfc3339_seconds_from_nanos(nanos: i64) -> String {
    Timestamp::from_nanosecond(i128::from(nanos))
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `time` with microseconds: `2026-11-22T23:51:33.919123Z` (Go's `time.Time` JSON
/// decoding, which containerd's shim applies to runc's log, accepts it).
pub fn rfc3339_micros(time: SystemTime) -> String {
    timestamp(time).strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses the UTC times lazarus writes (`2026-11-22T23:35:05.123Z`, with or without a
/// fraction). Anything else read from disk — other offsets, missing seconds, non-ASCII,
/// times before 1970 — is `None`, never a panic.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    // Only the shape lazarus writes: strptime's `%Y` would also take a sign or more digits.
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !bytes[..4].iter().all(u8::is_ascii_digit) || bytes[4] != b'-' {
        return None;
    }
    let civil = jiff::civil::DateTime::strptime("%Y-%m-%dT%H:%M:%S%.fZ", text).ok()?;
    let ts = Offset::UTC.to_timestamp(civil).ok()?;
    if ts < Timestamp::UNIX_EPOCH {
        return None;
    }
    Some(SystemTime::from(ts))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn created_and_tag_keep_their_byte_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_391_493) + Duration::from_nanos(919_999_999);
        let (created, tag) = created_and_tag(t);
        assert_eq!(created, "2026-11-22T23:51:33.919Z");
        assert_eq!(tag, "20261122T235133.919Z");
        assert_eq!(created_and_tag(UNIX_EPOCH), ("1970-01-01T00:00:00.000Z".into(), "19700101T000000.000Z".into()));
        // 2000-02-29: a leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(created_and_tag(leap).1, "20000229T000000.000Z");
    }

    #[test]
    fn seconds_and_micros() {
        assert_eq!(rfc3339_seconds_from_nanos(1_700_000_000_999_999_999), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_seconds_from_nanos(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_391_493) + Duration::from_nanos(919_123_999);
        assert_eq!(rfc3339_micros(t), "2026-11-22T23:51:33.919123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_micros(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn what_is_written_parses_back() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_391_493_919);
        let (created, _) = created_and_tag(t);
        assert_eq!(parse_rfc3339(&created), Some(t));
    }
}
