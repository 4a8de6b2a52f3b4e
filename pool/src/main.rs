fn main() -> std::process::ExitCode {
    tidepool_pool::cli::main()
}
