//! The `lazarus` binary: everything lives in the `lazarus_shim` library so the
//! tests run the same code.

fn main() -> std::process::ExitCode {
    lazarus_shim::cli::main()
}
