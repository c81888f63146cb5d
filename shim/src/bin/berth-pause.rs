//! berth-pause: holds a pod's namespaces; see [`berth_shim::pause`] and
//! `berth-pause --help`.

use std::process::ExitCode;

use berth_shim::pause::{Command, PauseConfig, PauseError, USAGE, run};

fn main() -> ExitCode {
    let result =
        PauseConfig::from_args(std::env::args_os().skip(1)).and_then(|command| match command {
            Command::Help => {
                println!("{USAGE}");
                Ok(0)
            }
            Command::Run(config) => run(&config),
        });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e @ PauseError::Usage(_)) => {
            eprintln!("berth-pause: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("berth-pause: {e}");
            ExitCode::FAILURE
        }
    }
}
