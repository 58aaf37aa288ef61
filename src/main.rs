//! The `multitokens` companion binary.

fn main() -> std::process::ExitCode {
    multitokens::cli::main()
}
