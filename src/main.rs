use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = runbook::cli::Cli::parse();
    runbook::cli::init_logging(cli.global.log_format);
    let code = match runbook::cli::main(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
