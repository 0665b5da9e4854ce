//! The `creditgate` command: the HTTP sidecar, operator commands and the benchmark.

fn main() -> std::process::ExitCode {
    creditgate_cli::run()
}

#[path = "cli/mod.rs"]
mod creditgate_cli;
