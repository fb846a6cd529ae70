//! The logs the wrapper reads and writes: CRIU's `restore.log`, runc's JSON log (where
//! containerd's shim finds the error of a failed call), the wrapper's own log, and the UTC
//! timestamps they carry.

use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

/// At most this many error lines of CRIU's log are reported.
pub const MAX_ERROR_LINES: usize = 15;
/// The last lines of CRIU's log are reported too (CRIU ends with its verdict).
pub const TAIL_LINES: usize = 3;
/// A reported line is cut to this many bytes.
const MAX_LINE: usize = 400;

/// The lines of a CRIU log worth reporting, in log order: the first [`MAX_ERROR_LINES`] that
/// mention an error or a failure, then the last [`TAIL_LINES`] lines not already taken.
pub fn relevant_lines(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().map(str::trim_end).filter(|line| !line.trim().is_empty()).collect();
    let mut picked: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| {
            let lower = line.to_ascii_lowercase();
            lower.contains("error") || lower.contains("fail")
        })
        .map(|(index, _)| index)
        .take(MAX_ERROR_LINES)
        .collect();
    for index in lines.len().saturating_sub(TAIL_LINES)..lines.len() {
        if !picked.contains(&index) {
            picked.push(index);
        }
    }
    picked.sort_unstable();
    picked.into_iter().map(|index| shorten(lines[index])).collect()
}

/// `line` cut to [`MAX_LINE`] bytes (at a character boundary), marked with `…` when cut.
fn shorten(line: &str) -> String {
    if line.len() <= MAX_LINE {
        return line.to_owned();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

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
    fn picks_errors_and_the_end_of_a_criu_log() {
        let log = "\
(00.000001) Version: 4.1.1
(00.000100) Will drop all TCP connections on restore
(00.010000) Error (criu/image.c:463): Unable to open inventory.img: No such file or directory
(00.010100) Warn  (criu/cr-restore.c:12): something harmless
(00.010200) mnt: Switching to new ns to clean ghosts
(00.010300) Error (criu/cr-restore.c:2522): Restoring FAILED.
(00.010400) Unlock network
(00.010500) Running network-unlock scripts

";
        assert_eq!(
            relevant_lines(log),
            [
                "(00.010000) Error (criu/image.c:463): Unable to open inventory.img: No such file or directory",
                "(00.010300) Error (criu/cr-restore.c:2522): Restoring FAILED.",
                "(00.010400) Unlock network",
                "(00.010500) Running network-unlock scripts",
            ]
        );
        assert!(relevant_lines("").is_empty());
        assert_eq!(relevant_lines("only line\n"), ["only line"]);
    }

    #[test]
    fn error_lines_are_capped_and_long_lines_cut() {
        let mut log: String = (0..40).map(|i| format!("({i}) Error (criu/x.c:{i}): boom\n")).collect();
        log.push_str("(98) pie: failed to do it\n(99) the end\n");
        let lines = relevant_lines(&log);
        assert_eq!(lines.len(), MAX_ERROR_LINES + TAIL_LINES);
        assert_eq!(lines[0], "(0) Error (criu/x.c:0): boom");
        assert_eq!(lines[MAX_ERROR_LINES - 1], "(14) Error (criu/x.c:14): boom");
        assert_eq!(
            &lines[MAX_ERROR_LINES..],
            ["(39) Error (criu/x.c:39): boom", "(98) pie: failed to do it", "(99) the end"]
        );

        let long = format!("Error: {}", "é".repeat(400));
        let cut = &relevant_lines(&long)[0];
        assert!(cut.len() <= MAX_LINE + '…'.len_utf8() && cut.ends_with('…'));
    }

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
