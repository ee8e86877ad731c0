//! `runbook serve`: builds the app, serves the HTTP API, runs the workers and the outbox
//! dispatcher until SIGTERM or SIGINT, then drains.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::{parse_size, Setup};
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
        eprintln!("{d}");
    }

    let addr = listen.unwrap_or_else(|| setup.config.server.listen.clone());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    println!("listening on http://{local}");
    eprintln!("{}", receiver.describe());
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
    tasks.spawn(async move {
        if let Err(e) = server::serve(listener, state, limits, http_shutdown).await {
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
