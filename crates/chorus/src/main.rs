//! The `chorus` binary: parse, set up logs, build, run until a shutdown signal.

use anyhow::Context;
use chorus::cli::{Cli, Command};
use chorus::node::Node;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's allocator: glibc keeps the memory of freed password
/// hashes (argon2's 19 MiB each) in its per-thread arenas, so 200 sign-ins left the
/// server at ~700 MB; mimalloc returns it (see BENCHMARKS.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.config()?;
            chorus::telemetry::init_logs(config.log_format == "json");
            let node = Node::build(config).await.context("starting chorus")?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signal(shutdown.clone()));
            node.run(shutdown).await
        }
        #[cfg(feature = "bench")]
        Command::Bench(args) => chorus_bench::run(args).await,
        #[cfg(not(feature = "bench"))]
        Command::Bench { .. } => anyhow::bail!(
            "this chorus was built without the load generator: \
             cargo build --release -p chorus --features bench"
        ),
        Command::Jobs(args) => args.run(&mut std::io::stdin(), &mut std::io::stdout()),
        Command::Users(args) => args.run(&mut std::io::stdout()).await,
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    shutdown.cancel();
}
