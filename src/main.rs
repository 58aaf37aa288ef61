//! The `multitokens` companion binary.

fn main() -> std::process::ExitCode {
    multitokens::companion::cli::main()
}
