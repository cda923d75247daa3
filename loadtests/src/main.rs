//! `wsload`: runs one scenario against a gateway, a fleet or the raw baseline, and prints a
//! summary (plus JSON with `--json FILE`). See the library's documentation for the layout.

use clap::{Parser, Subcommand};
use loadtests::report;
use loadtests::scenario::{compare, connect, drain, fanout, rebalance, storm, throughput};

#[derive(Debug, Parser)]
#[command(
    name = "wsload",
    version,
    about = "Load generator for the WebSocket gateway (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open N idle sessions at a bounded rate; handshake rate and gateway RSS per session.
    Connect(connect::ConnectArgs),
    /// Subscribers over topics, publishers at a rate: throughput, latency, loss.
    Fanout(fanout::FanoutArgs),
    /// Drain one pod under load: 1001s, reconnect times, loss.
    Drain(drain::DrainArgs),
    /// Add a pod to a loaded fleet: time to balance, loss.
    Rebalance(rebalance::RebalanceArgs),
    /// Every client reconnects at once: accept rate, time to welcome.
    Storm(storm::StormArgs),
    /// A run against its reference run (baseline, or embedded for the cluster): the ratio and
    /// whether the target is met, from their JSON reports.
    Compare(compare::CompareArgs),
    /// Publishers with many publishes in flight: publishes/s into the system, Redis CPU per
    /// publish, ratio to the store's own limit.
    Throughput(throughput::ThroughputArgs),
    /// The raw tokio-tungstenite broadcast server the figures are compared with.
    BaselineServer {
        /// Loopback address to listen on.
        #[arg(long, default_value = "127.0.0.1:9300")]
        listen: std::net::SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (json_path, report) = match cli.command {
        Command::BaselineServer { listen } => return loadtests::baseline::run(listen).await,
        Command::Connect(a) => {
            let worker = a.worker;
            let path = a.common.json.clone();
            let r = connect::run(a).await?;
            if worker {
                return Ok(());
            }
            (path, r)
        }
        Command::Compare(a) => (a.json.clone(), compare::run(&a)?),
        Command::Fanout(a) => (a.common.json.clone(), fanout::run(a).await?),
        Command::Drain(a) => (a.common.json.clone(), drain::run(a).await?),
        Command::Rebalance(a) => (a.common.json.clone(), rebalance::run(a).await?),
        Command::Storm(a) => (a.common.json.clone(), storm::run(a).await?),
        Command::Throughput(a) => (a.json.clone(), throughput::run(a).await?),
    };
    report::write_json(json_path.as_deref(), &report)
}
