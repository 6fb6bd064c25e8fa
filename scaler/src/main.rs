fn main() -> std::process::ExitCode {
    scaler::cli::main()
}
