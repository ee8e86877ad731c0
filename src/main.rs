use clap::Parser;

#[tokio::main]
async fn main() {
    quiet_on_closed_stdout();
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

/// A reader that stops early (`runbook schema | head`) ends the command quietly, with the status
/// a shell reports for a program ended by SIGPIPE (141), instead of the panic `println!` raises
/// on a closed stdout. SIGPIPE itself stays ignored, as Rust sets it: a closed socket or a shell
/// step's closed pipe is an error to handle, never a reason to die. Other panics report as before.
fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}
