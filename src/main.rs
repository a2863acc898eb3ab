//! The `btc-escrow` command line: JSON on stdout, human messages on stderr, a non-zero
//! exit status on any error.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "btc-escrow",
    version,
    about = "Bitcoin-native collateral escrow"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What the Electrum server says about the chain.
    #[command(subcommand)]
    Chain(ChainCmd),
    /// Party keys.
    #[command(subcommand)]
    Key(cli::KeyCmd),
    /// Escrow policy templates and descriptors.
    #[command(subcommand)]
    Policy(cli::PolicyCmd),
    /// Build, sign and finalize escrow spends.
    #[command(subcommand)]
    Psbt(cli::PsbtCmd),
    /// The BTC price oracle.
    #[command(subcommand)]
    Oracle(cli::OracleCmd),
}

#[derive(Subcommand)]
enum ChainCmd {
    /// Tip height and hash, server version and fee estimate.
    Status {
        /// Electrum server, e.g. tcp://127.0.0.1:60401 or ssl://host:50002.
        #[arg(long, env = "BTC_ESCROW_ELECTRUM")]
        electrum: String,
        /// bitcoin, testnet4, signet or regtest.
        #[arg(long, env = "BTC_ESCROW_NETWORK", default_value = "regtest")]
        network: bitcoin::Network,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Chain(ChainCmd::Status { electrum, network }) => {
            let status = btc_escrow::chain::status(&electrum, network)
                .with_context(|| format!("asking {electrum} for the chain status"))?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Key(cmd) => cli::key(cmd),
        Command::Policy(cmd) => cli::policy(cmd),
        Command::Psbt(cmd) => cli::psbt(cmd),
        Command::Oracle(cmd) => cli::oracle(cmd),
    }
}
