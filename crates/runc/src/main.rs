//! `lazarus-runc`: the runc wrapper containerd's runc shim calls for lazarus's runtime handler.
//! It turns `runc create` into `runc restore` for containers lazarus left a restore plan for
//! and hands every other call to the real runc; see the `lazarus_runc` library.

fn main() -> std::process::ExitCode {
    lazarus_runc::main()
}
