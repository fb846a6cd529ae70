//! The logs the wrapper reads and writes: runc's JSON log (where containerd's shim finds the
//! error of a failed call), the wrapper's own log, and the UTC timestamps they carry. What is
//! quoted of CRIU's `restore.log` is chosen by [`lazarus_format::criu_log`].

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

/// The message of the last `"level":"error"` entry of a runc JSON log text (runc writes its
/// own reason for failing there), on one line.
pub fn last_runc_error(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["level"] == "error")
        .filter_map(|entry| entry["msg"].as_str().map(|msg| msg.split_whitespace().collect::<Vec<_>>().join(" ")))
        .rfind(|msg| !msg.is_empty())
}

/// Appends an error entry to runc's JSON log, the way runc writes one. containerd's shim
/// reports the last error-level message of this file as the error of the failed call.
pub fn append_runc_error(log: &Path, msg: &str) -> std::io::Result<()> {
    let entry = serde_json::json!({ "level": "error", "msg": msg, "time": rfc3339(SystemTime::now()) });
    let mut line = entry.to_string();
    line.push('\n');
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    file.write_all(line.as_bytes())
}

/// Appends one line to a text log.
pub fn append_line(log: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    file.write_all(format!("{line}\n").as_bytes())
}

/// `time` as RFC 3339 in UTC with microseconds: `2026-11-22T23:51:33.919123Z` (see [`lazarus_format::timefmt`]).
pub fn rfc3339(time: SystemTime) -> String {
    lazarus_format::timefmt::rfc3339_micros(time)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn the_last_runc_error_of_a_json_log() {
        let log = r#"{"level":"info","msg":"starting","time":"2026-01-01T00:00:00Z"}
{"level":"error","msg":"criu failed: type NOTIFY errno 0\nlog file: /w/restore.log","time":"2026-01-01T00:00:01Z"}
not json
{"level":"warning","msg":"late","time":"2026-01-01T00:00:02Z"}
"#;
        assert_eq!(last_runc_error(log).as_deref(), Some("criu failed: type NOTIFY errno 0 log file: /w/restore.log"));
        assert_eq!(last_runc_error("{\"level\":\"info\",\"msg\":\"x\"}"), None);
    }

    #[test]
    fn appended_errors_are_what_containerds_shim_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log.json");
        std::fs::write(&log, "{\"level\":\"error\",\"msg\":\"runc's own\",\"time\":\"2026-01-01T00:00:00Z\"}\n")
            .expect("write");
        append_runc_error(&log, "lazarus: restoring container x failed: \"quoted\"\nsecond line").expect("append");
        let text = std::fs::read_to_string(&log).expect("read");
        assert_eq!(text.lines().count(), 2);
        let last: serde_json::Value = serde_json::from_str(text.lines().last().expect("line")).expect("json");
        assert_eq!(last["level"], "error");
        assert_eq!(last["msg"], "lazarus: restoring container x failed: \"quoted\"\nsecond line");
        assert!(last["time"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 27), "{last}");
    }

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_391_493) + Duration::from_micros(919_123);
        assert_eq!(rfc3339(t), "2026-11-22T23:51:33.919123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }
}
