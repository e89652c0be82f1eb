use std::process::ExitCode;

fn main() -> ExitCode {
    syncd::cli::main()
}
