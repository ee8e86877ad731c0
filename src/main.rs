use clap::Parser;

/// jemalloc instead of glibc's malloc: glibc's allocation and freeing (with its fastbin
/// consolidation) took over a quarter of `runbook serve`'s CPU while it received webhooks, most of
/// it on the requests' and the writer's paths (benches/ingest.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: two arenas (the runtime has a worker per core, and
/// each arena more is more memory held), and freed pages handed back to the system after a
/// second instead of ten, so an idle server stays small.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf =
    MallocConf(c"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// jemalloc's `malloc_conf`: a C string pointer.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a string literal, immutable and valid for the whole run.
unsafe impl Sync for MallocConf {}

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
