//! `kvpick-epp`: the endpoint picker sidecar. Wiring only: flags → settings → serve until a signal.
#![forbid(unsafe_code)]

use anyhow::Context;
use kvpick_epp::config::{self, Command};
use kvpick_epp::{Server, Settings};

fn main() -> anyhow::Result<()> {
    let cli = match config::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging(cli.log_json(), cli.chart.log_filter().unwrap_or("info"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        if let Some(Command::Query { server, what }) = cli.command {
            let text = kvpick_epp::query::client::run(server, what).await?;
            print!("{text}");
            return Ok(());
        }
        let settings = Settings::from_cli(&cli)?;
        if settings.endpoints_file.is_none() && settings.kubernetes.is_none() {
            tracing::warn!("no --endpoints-file, --pool-name or --endpoint-selector: the pool is empty and every request gets 503");
        }
        let server = Server::bind(settings)
            .await
            .context("starting kvpick-epp")?;
        tracing::info!(
            grpc = ?server.grpc_addr(),
            query = ?server.query_addr(),
            health = ?server.health_addr(),
            metrics = ?server.metrics_addr(),
            "listening"
        );
        server
            .run(shutdown_signal())
            .await
            .context("kvpick-epp failed")
    });
    // Dropping the runtime would wait for every blocking task; the server's shutdown already
    // stopped renders and waited its grace period, so exit without waiting again.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Logs as `json` or text, filtered by RUST_LOG, else `level` (from `-v`, default info).
fn init_logging(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only on a terminal: a log written to a file or a pipe stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
