//! What lazarus quotes of CRIU's `dump.log` and `restore.log` when a dump or a
//! restore fails: the one choice for the daemon and the wrapper.
//!
//! CRIU marks its errors `Error (file:line): …` and warnings `Warn  (file:line): …`
//! (`criu/include/log.h`). The quote leads with the errors, in log order — the
//! first is usually the cause — then the last lines (CRIU's verdict, `Dumping
//! FAILED.` / `Restoring FAILED.`). Lines known to be harmless are dropped, and
//! the whole quote stays short enough for `kubectl describe`.

/// At most this many error lines are quoted.
pub const MAX_ERROR_LINES: usize = 10;
/// The last lines of the log are quoted too (CRIU ends with its verdict).
pub const TAIL_LINES: usize = 3;
/// A quoted line is cut to this many bytes.
pub const MAX_LINE: usize = 300;
/// The quoted lines together stay below this many bytes (the tail is kept).
pub const MAX_TOTAL: usize = 2048;

/// Errors CRIU logs on every run on these machines that say nothing about why a dump or a
/// restore failed: without `CAP_SYS_RESOURCE` CRIU cannot raise its own open-files limit
/// (`criu/util.c`), and goes on.
const HARMLESS: &[&str] = &["Can't setup RLIMIT_NOFILE for self"];

/// CRIU's prefix of an error line.
const ERROR_MARK: &str = "Error (";

fn is_harmless(line: &str) -> bool {
    HARMLESS.iter().any(|pattern| line.contains(pattern))
}

/// The lines of a CRIU log worth quoting, in log order: the first [`MAX_ERROR_LINES`]
/// errors CRIU marked as such (harmless ones left out), then the last [`TAIL_LINES`] lines
/// not already taken. A log without CRIU's error marks (not CRIU's, or cut short) is
/// searched for lines saying "error" or "fail" instead — but not CRIU's `Collected …`
/// lines, which name files whose paths may say anything.
pub fn relevant_lines(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().map(str::trim_end).filter(|line| !line.trim().is_empty()).collect();
    let has_marks = lines.iter().any(|line| line.contains(ERROR_MARK));
    let is_error = |line: &str| {
        if has_marks {
            line.contains(ERROR_MARK) && !is_harmless(line)
        } else {
            let lower = line.to_ascii_lowercase();
            (lower.contains("error") || lower.contains("fail")) && !line.contains(") Collected ")
        }
    };
    let mut picked: Vec<usize> =
        (0..lines.len()).filter(|&index| is_error(lines[index])).take(MAX_ERROR_LINES).collect();
    let tail_start = lines.len().saturating_sub(TAIL_LINES);
    for (index, line) in lines.iter().enumerate().skip(tail_start) {
        if !picked.contains(&index) && !is_harmless(line) {
            picked.push(index);
        }
    }
    picked.sort_unstable();
    let mut quoted: Vec<String> = picked.into_iter().map(|index| shorten(lines[index])).collect();
    // Over the budget: drop error lines from the end of the errors, never the first
    // (the cause) nor the tail (the verdict).
    while quoted.iter().map(|l| l.len() + 1).sum::<usize>() > MAX_TOTAL && quoted.len() > TAIL_LINES + 1 {
        quoted.remove(quoted.len() - TAIL_LINES - 1);
    }
    quoted
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_leads_and_the_verdict_ends() {
        let log = "\
(00.000001) Version: 4.1.1
(00.000050) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.000100) Will drop all TCP connections on restore
(00.000200) Collected [var/log/error-report.txt] ID 0x1c
(00.010000) Error (criu/files-reg.c:2171): Can't open file scratch/log on restore: No such file or directory
(00.010100) Warn  (criu/cr-restore.c:12): something harmless
(00.010200) mnt: Switching to new ns to clean ghosts
(00.010300) Error (criu/cr-restore.c:2522): Restoring FAILED.
(00.010400) Unlock network
(00.010500) Running network-unlock scripts

";
        assert_eq!(
            relevant_lines(log),
            [
                "(00.010000) Error (criu/files-reg.c:2171): Can't open file scratch/log on restore: No such file or directory",
                "(00.010300) Error (criu/cr-restore.c:2522): Restoring FAILED.",
                "(00.010400) Unlock network",
                "(00.010500) Running network-unlock scripts",
            ]
        );
        assert!(relevant_lines("").is_empty());
        assert_eq!(relevant_lines("only line\n"), ["only line"]);
    }

    #[test]
    fn a_log_of_harmless_errors_only_quotes_its_end() {
        let log = "\
(00.01) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.02) Collected [tmp/failures.db] ID 0x2
(00.03) Dumping finished successfully
";
        assert_eq!(
            relevant_lines(log),
            ["(00.02) Collected [tmp/failures.db] ID 0x2", "(00.03) Dumping finished successfully"]
        );
    }

    #[test]
    fn without_criu_marks_error_words_are_searched() {
        let log = "starting\n(00.1) Collected [srv/fail.log] ID 0x3\nsetup failed: permission denied\nthe end\n";
        assert_eq!(
            relevant_lines(log),
            ["(00.1) Collected [srv/fail.log] ID 0x3", "setup failed: permission denied", "the end"]
        );
        // The Collected line is there only as part of the tail, not as an error.
        let longer = "a\n(00.1) Collected [srv/fail.log] ID 0x3\nb\nc\nd\n";
        assert_eq!(relevant_lines(longer), ["b", "c", "d"]);
    }

    #[test]
    fn errors_are_capped_lines_cut_and_the_whole_stays_short() {
        let mut log: String = (0..40).map(|i| format!("({i}) Error (criu/x.c:{i}): boom\n")).collect();
        log.push_str("(98) pie: failed to do it\n(99) the end\n");
        let lines = relevant_lines(&log);
        assert_eq!(lines.len(), MAX_ERROR_LINES + TAIL_LINES);
        assert_eq!(lines[0], "(0) Error (criu/x.c:0): boom");
        assert_eq!(lines[MAX_ERROR_LINES - 1], "(9) Error (criu/x.c:9): boom");
        assert_eq!(
            &lines[MAX_ERROR_LINES..],
            ["(39) Error (criu/x.c:39): boom", "(98) pie: failed to do it", "(99) the end"]
        );

        let long = format!("Error (x): {}", "é".repeat(400));
        let cut = &relevant_lines(&long)[0];
        assert!(cut.len() <= MAX_LINE + '…'.len_utf8() && cut.ends_with('…'));

        let wide: String = (0..40).map(|i| format!("({i}) Error (criu/y.c:{i}): {}\n", "x".repeat(280))).collect();
        let quoted = relevant_lines(&wide);
        assert!(quoted.iter().map(|l| l.len() + 1).sum::<usize>() <= MAX_TOTAL, "{}", quoted.len());
        assert!(quoted[0].starts_with("(0) Error"), "the cause stays first");
        assert!(quoted.last().is_some_and(|l| l.starts_with("(39) Error")), "the end stays last");
    }
}
