fn main() -> std::process::ExitCode {
    tidepool_pool::process::cli::main()
}
