//! The `lazarus` binary: everything lives in the `lazarus_daemon` library so the
//! tests run the same code.

fn main() -> std::process::ExitCode {
    lazarus_daemon::cli::main()
}
