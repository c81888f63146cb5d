//! berth-shim: supervises one task (a container through runc, or a pod's
//! pause process) and serves containerd's shim v2 Task API; see
//! [`berth_shim::server`] and `berth-shim --help`.

use std::process::ExitCode;

use berth_shim::server::{ShimError, USAGE, run};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "-help")
    {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ShimError::Usage(_)) => {
            eprintln!("berth-shim: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("berth-shim: {e}");
            ExitCode::FAILURE
        }
    }
}
