//! `runbook serve`: builds the app, serves the HTTP API, runs the workers and the outbox
//! dispatcher until SIGTERM or SIGINT, then drains.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::{output::errln, parse_size, Setup};
use crate::{process::app::App, server, status::RunStatus, store::runs};

pub(super) async fn serve(setup: &Setup, listen: Option<String>, no_workers: bool) -> Result<i32> {
    let store = setup.store().await?;
    let tokens = server::Tokens::from_config(&setup.config, &setup.masker)?;
    let receiver = server::receiver::ReceiverAuth::from_config(&setup.config, &setup.masker);
    let max_body = parse_size(setup.config.server.max_body.as_deref().unwrap_or("1MiB"))?;
    let limits = server::Limits::from_config(&setup.config.server, max_body);
    let (mut app, diags) = App::build(
        store,
        setup.config.clone(),
        setup.masker.clone(),
        &setup.runbooks,
    )?;
    for d in &diags {
        tracing::error!(%d, "Playbook not loaded.");
    }

    let addr = listen.unwrap_or_else(|| setup.config.server.listen.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    println!("listening on http://{local}");
    summary(setup, &app, &diags, &tokens, &receiver, no_workers);
    tracing::info!(receiver = %receiver.describe(), "Alert receiver.");
    tracing::info!(
        %local,
        playbooks = app.engine.catalog().playbooks.len(),
        max_connections = limits.max_connections,
        header_read_timeout = ?limits.header_read_timeout,
        request_timeout = ?limits.request_timeout,
        "Serving."
    );

    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    app.start(!no_workers, &mut tasks, &shutdown);
    // The queue's depth over time, for the console's chart.
    crate::console::sampler::spawn(app.services.clone(), &mut tasks, shutdown.clone());
    let state = Arc::new(server::AppState {
        engine: app.engine.clone(),
        services: app.services.clone(),
        metrics: app.metrics.clone(),
        tokens,
        receiver,
        ingest: server::receiver::Ingest::start(
            app.engine.clone(),
            app.services.clone(),
            app.metrics.clone(),
        ),
    });
    let http_shutdown = shutdown.clone();
    // The web console under `/ui`; its event streams end when the server shuts down.
    let console = crate::console::router(&limits, http_shutdown.clone());
    tasks.spawn(async move {
        if let Err(e) = server::serve(listener, state, limits, console, http_shutdown).await {
            tracing::error!(error = %e, "HTTP server stopped.");
        }
    });
    server::signal().await;
    eprintln!("shutting down: finishing the work in hand");
    shutdown.cancel();
    let grace = std::time::Duration::from_secs(30);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    let store = &app.services.store;
    if drained.is_err() {
        let running = runs::list_runs(store, None, 20).await.unwrap_or_default();
        let ids: Vec<String> = running
            .iter()
            .filter(|r| r["status"] == RunStatus::Running.as_str())
            .map(|r| r["id"].to_string())
            .collect();
        eprintln!("grace period over; runs still going: {}", ids.join(", "));
    }
    store.close().await;
    Ok(0)
}

/// What this server serves, said once at start on stderr: the store (password masked), the
/// playbooks loaded and the broken ones with their problems, the command handlers, the API
/// tokens (names and roles, never the tokens), the alert receiver and the schedule.
fn summary(
    setup: &Setup,
    app: &App,
    diags: &[crate::diagnostics::Diagnostic],
    tokens: &server::Tokens,
    receiver: &server::receiver::ReceiverAuth,
    no_workers: bool,
) {
    errln!(
        "store: {}",
        setup
            .masker
            .mask_str(&crate::store::redact_url(&setup.store_url))
    );
    let catalog = app.engine.catalog();
    let mut broken: Vec<&std::path::Path> = diags.iter().map(|d| d.path.as_path()).collect();
    broken.dedup();
    errln!(
        "playbooks: {} loaded from {}{}",
        catalog.playbooks.len(),
        setup.runbooks.display(),
        if broken.is_empty() {
            String::new()
        } else {
            format!(", {} file(s) not loaded:", broken.len())
        }
    );
    for d in diags {
        errln!("  {d}");
    }
    let handlers: Vec<&str> = setup
        .config
        .streaming
        .handlers
        .keys()
        .map(String::as_str)
        .collect();
    errln!(
        "workers: {}; command handlers: {} (and `{}` for playbook runs)",
        if no_workers {
            "off (--no-workers)"
        } else {
            "on"
        },
        if handlers.is_empty() {
            "none in streaming.handlers".to_owned()
        } else {
            handlers.join(", ")
        },
        crate::process::runs::RUN_COMMAND
    );
    let names: Vec<String> = tokens
        .principals()
        .map(|p| format!("{} ({})", p.name, p.role))
        .collect();
    let configured = setup.config.auth.tokens.len();
    errln!(
        "API tokens: {}{}",
        if names.is_empty() {
            "none usable, so the API refuses every protected call".to_owned()
        } else {
            names.join(", ")
        },
        if configured > names.len() {
            format!(
                "; {} configured token(s) disabled (see the warnings above)",
                configured - names.len()
            )
        } else {
            String::new()
        }
    );
    errln!("{}", receiver.describe());
    let now = chrono::Utc::now();
    let scheduled: Vec<String> = catalog
        .playbooks
        .values()
        .filter_map(|p| {
            let s = p.triggers.schedule.as_ref()?;
            let next = s
                .upcoming(now, 1)
                .first()
                .map(|t| t.with_timezone(&s.tz).to_rfc3339())
                .unwrap_or_else(|| "never".to_owned());
            Some(format!("  {} `{}` next {next}", p.name, s.expr))
        })
        .collect();
    if scheduled.is_empty() {
        errln!("schedule: no playbook has on.schedule");
    } else {
        errln!("schedule:");
        for line in scheduled {
            errln!("{line}");
        }
    }
}
