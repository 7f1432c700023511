use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = ccgate::cli::Cli::parse();
    match ccgate::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
