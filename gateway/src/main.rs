//! `gateway`: runs a gateway pod (the default), or one of the tools around it.

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::client::ClientArgs;
use gateway::ops::{DrainArgs, DrainPeerArgs, StatusArgs, Target, UndrainArgs};
use gateway::{Config, Listeners};

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Horizontally scalable WebSocket gateway",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to a gateway from the terminal: print what arrives, publish what you type.
    Client(ClientArgs),
    /// Drain one pod (1001 to every client, paced) and wait until it has no connections.
    Drain(DrainArgs),
    /// Undo an operator's drain: the pod takes connections again (not after SIGTERM).
    Undrain(UndrainArgs),
    /// Close, on every gateway, the connections coming from one load balancer pod (its
    /// preStop hook), paced, and wait until none is left.
    DrainPeer(DrainPeerArgs),
    /// Print the fleet: connections, share, capacity and draining per pod.
    Status(StatusArgs),
    /// Mint an HS256 test token with the gateway's secret.
    Token(gateway::auth::TokenArgs),
    /// Close every connection of a user on every pod (1008, no reconnect) and end its sessions.
    Disconnect(gateway::ops::DisconnectArgs),
    /// Refuse a user or a token (`jti`) on hello, refresh and resume for a while.
    Revoke(gateway::ops::RevokeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.serve.log_format);
    match cli.command {
        Some(Command::Client(args)) => Ok(gateway::client::run(args).await?),
        Some(Command::Drain(args)) => {
            let target = Target::from_args(&args.target).await?;
            gateway::ops::drain(&target, &args, &mut std::io::stdout()).await?;
            Ok(())
        }
        Some(Command::Undrain(args)) => {
            let target = Target::from_args(&args.target).await?;
            gateway::ops::undrain(&target, &mut std::io::stdout()).await?;
            Ok(())
        }
        Some(Command::DrainPeer(args)) => {
            gateway::ops::peer::drain_peer(&args, &mut std::io::stdout()).await?;
            Ok(())
        }
        Some(Command::Token(args)) => {
            println!("{}", gateway::auth::mint_from_args(&args)?);
            Ok(())
        }
        Some(Command::Status(args)) => {
            let target = Target::from_args(&args.target).await?;
            if !gateway::ops::status(&target, &args, &mut std::io::stdout()).await? {
                std::process::exit(1);
            }
            Ok(())
        }
        Some(Command::Disconnect(args)) => {
            let target = Target::from_args(&args.target).await?;
            gateway::ops::disconnect(&target, &args, &mut std::io::stdout()).await?;
            Ok(())
        }
        Some(Command::Revoke(args)) => {
            let target = Target::from_args(&args.target).await?;
            gateway::ops::revoke(&target, &args, &mut std::io::stdout()).await?;
            Ok(())
        }
        None => serve(cli.serve).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    config.validate().context("invalid configuration")?;
    let listeners = Listeners::bind(&config)
        .await
        .with_context(|| format!("cannot bind {} and {}", config.listen, config.admin_listen))?;
    gateway::run(listeners, config, shutdown_signal()).await?;
    Ok(())
}

/// Logs to stderr at `RUST_LOG` (default `info`), as text or one JSON object per line.
fn init_logging(format: gateway::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        gateway::config::LogFormat::Text => logs.init(),
        gateway::config::LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
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
