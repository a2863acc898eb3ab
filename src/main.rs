//! The `btc-escrow` command line: JSON on stdout, human messages on stderr, a non-zero
//! exit status on any error.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod cli;

/// The service's allocator (see `btc_escrow::alloc`).
#[global_allocator]
static ALLOCATOR: btc_escrow::alloc::Allocator = btc_escrow::alloc::ALLOCATOR;

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
    /// Create a data directory: arbiter key, database, configuration, admin token.
    Init {
        #[arg(long, env = "BTC_ESCROW_DATA_DIR")]
        data_dir: std::path::PathBuf,
        /// bitcoin, testnet, testnet4, signet or regtest.
        #[arg(long, env = "BTC_ESCROW_NETWORK")]
        network: String,
        /// Electrum server (default: electrs's port for the network on localhost).
        #[arg(long, env = "BTC_ESCROW_ELECTRUM")]
        electrum: Option<String>,
        /// The HTTP API's address (default 127.0.0.1:8080).
        #[arg(long, env = "BTC_ESCROW_LISTEN")]
        listen: Option<String>,
        /// The manual price source alone, quorum 1 (regtest and demos).
        #[arg(long)]
        manual_oracle: bool,
    },
    /// Run the service: the engine, the chain watcher and the price oracle, until
    /// SIGINT or SIGTERM.
    Serve {
        #[arg(long, env = "BTC_ESCROW_DATA_DIR")]
        data_dir: std::path::PathBuf,
        #[command(flatten)]
        overrides: btc_escrow::config::Overrides,
    },
    /// The service's configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
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
    /// Parties, against a running server (admin).
    #[command(subcommand)]
    Party(cli::client::PartyCmd),
    /// Loans, against a running server.
    #[command(subcommand)]
    Loan(cli::client::LoanCmd),
    /// Check an escrow before funding it (or paying out the principal), from your own
    /// key and the terms you agreed to: any mismatch is an error naming it.
    VerifyEscrow(cli::tools::VerifyArgs),
    /// The lender's co-signer daemon: signs pending PSBTs of its loans only after
    /// checking them itself.
    Cosign(cli::tools::CosignArgs),
    /// Leave an escrow with no server: your timelocked path, or a cooperative PSBT.
    Exit(cli::tools::ExitArgs),
    /// Plan a loan: principal, interest, margin-call and liquidation prices, a stress
    /// table, and for a miner the days of mining that repay it (JSON).
    Plan(cli::plan::PlanArgs),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Load and validate the configuration (file < environment < flags) and print the
    /// effective settings, secrets shown only as set or not; exit 1 naming a bad field.
    Check {
        #[arg(long, env = "BTC_ESCROW_DATA_DIR")]
        data_dir: std::path::PathBuf,
        #[command(flatten)]
        overrides: btc_escrow::config::Overrides,
    },
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
        /// For ssl:// URLs: trust only the certificates in this PEM file.
        #[arg(long, env = "BTC_ESCROW_ELECTRUM_CA_FILE")]
        electrum_ca_file: Option<std::path::PathBuf>,
        /// For ssl:// URLs: accept any certificate (testing only).
        #[arg(long, env = "BTC_ESCROW_ELECTRUM_INSECURE")]
        electrum_insecure: bool,
    },
    /// Broadcast a raw transaction (hex on stdin) through your own Electrum server.
    Broadcast {
        #[arg(long, env = "BTC_ESCROW_ELECTRUM")]
        electrum: String,
        #[arg(long, env = "BTC_ESCROW_NETWORK", default_value = "regtest")]
        network: bitcoin::Network,
    },
}

fn main() -> ExitCode {
    btc_escrow::alloc::configure();
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
            // A server's answer or an unreachable server: an exit code of its kind.
            match err.downcast_ref::<btc_escrow::client::ClientError>() {
                Some(e) => ExitCode::from(e.kind.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Start the service and its HTTP API, wait for SIGINT or SIGTERM, shut down cleanly:
/// the API stops taking requests and finishes those in hand, then the engine finishes
/// the message in hand and flushes.
fn serve(
    data_dir: &std::path::Path,
    overrides: &btc_escrow::config::Overrides,
) -> anyhow::Result<()> {
    let settings = btc_escrow::config::Settings::load(data_dir, overrides)?;
    let currency =
        btc_escrow::loan::Currency::new(&settings.oracle.currency).context("oracle.currency")?;
    let service = btc_escrow::service::Service::start(&settings)
        .with_context(|| format!("starting the service on {}", data_dir.display()))?;
    let arbiter = service
        .handle()
        .call(|ctx| ctx.engine.arbiter_account().to_string())?;
    let state = btc_escrow::api::ApiState::new(
        service.handle(),
        service.store(),
        settings.network,
        currency,
        arbiter,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("btc-escrow-api")
        .enable_all()
        .build()
        .context("starting the API runtime")?;
    let served = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // The handlers are in place before anyone is told the service runs.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("listen: binding {}", settings.listen))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "serving {} (network {}, electrum {}); SIGINT or SIGTERM stops it",
            data_dir.display(),
            settings.network,
            settings.electrum_url
        );
        eprintln!("api http://{addr}/v1");
        eprintln!("openapi http://{addr}/v1/openapi.json");
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("stopping");
        };
        btc_escrow::api::serve(listener, state, shutdown).await?;
        Ok::<(), anyhow::Error>(())
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    service.shutdown();
    served?;
    eprintln!("stopped");
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            network,
            electrum,
            listen,
            manual_oracle,
        } => {
            let done = btc_escrow::init::init(&btc_escrow::init::InitOptions {
                network: btc_escrow::config::parse_network(&network)?,
                data_dir,
                electrum_url: electrum,
                listen,
                manual_oracle,
            })?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            eprintln!("keep the admin token: it is shown once and stored only as a hash");
            Ok(())
        }
        Command::Serve {
            data_dir,
            overrides,
        } => serve(&data_dir, &overrides),
        Command::Config(ConfigCmd::Check {
            data_dir,
            overrides,
        }) => {
            let settings = btc_escrow::config::Settings::load(&data_dir, &overrides)?;
            println!("{}", serde_json::to_string_pretty(&settings.show())?);
            Ok(())
        }
        Command::Chain(ChainCmd::Status {
            electrum,
            network,
            electrum_ca_file,
            electrum_insecure,
        }) => {
            let tls = btc_escrow::chain::TlsConfig {
                ca_file: electrum_ca_file,
                insecure: electrum_insecure,
            };
            let status = btc_escrow::chain::status_with(&electrum, network, &tls)
                .with_context(|| format!("asking {electrum} for the chain status"))?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Key(cmd) => cli::key(cmd),
        Command::Policy(cmd) => cli::policy(cmd),
        Command::Psbt(cmd) => cli::psbt(cmd),
        Command::Oracle(cmd) => cli::oracle(cmd),
        Command::Party(cmd) => cli::client::party(cmd),
        Command::Loan(cmd) => cli::client::loan(cmd),
        Command::VerifyEscrow(args) => cli::tools::verify(args),
        Command::Cosign(args) => cli::tools::cosign(args),
        Command::Exit(args) => cli::tools::exit(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Chain(ChainCmd::Broadcast { electrum, network }) => {
            cli::tools::broadcast(&electrum, network)
        }
    }
}
