#![doc = include_str!("../README.md")]

mod balance;
mod bench;
mod demo;
mod run;
mod serve;
mod store_cmd;
mod trim;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// SocketCluster for Rust: a realtime WebSocket server compatible with socketcluster-client v20.
#[derive(Debug, Parser)]
#[command(name = "socketcluster", version)]
#[deny(missing_docs)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[deny(missing_docs)]
enum Command {
    /// Run the cluster on this machine: a master that runs balancers, workers and store
    /// processes with the demo app, respawns what dies, drains on SIGTERM and restarts the
    /// workers one at a time on SIGUSR2
    Run(run::RunArgs),
    /// Run the server with the demo app in one process (channels in process, or shared
    /// through --store)
    Serve(serve::ServeArgs),
    /// Print the default config file (TOML) for `serve --config`
    GenConfig,
    /// Load generator for SocketCluster (and socket.io) servers: echo, rate, ping, fanout, conns
    Bench(bench::BenchArgs),
    /// Run a balancer: the front door that proxies requests and WebSockets to workers
    Balance(balance::BalanceArgs),
    /// Run a store server process: keys with TTL, maps, lists and pub/sub over the Redis protocol
    Store(store_cmd::StoreArgs),
}

/// Exit code of a bad flag or config value (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Writes one line to stdout and flushes it (the test harnesses wait for it).
pub(crate) fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Log lines on stderr, filtered by `RUST_LOG` (default `info`).
pub(crate) fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Balance(args) => balance::run(args),
        Command::Store(args) => store_cmd::run(args),
        Command::GenConfig => match serve::gen_config() {
            Ok(text) => {
                print_line(text.trim_end());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let cfg = match serve::resolve(args) {
                Ok(c) => c,
                Err(serve::ConfigProblem(m)) => {
                    eprintln!("error: {m}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_tracing();
            let runtime = match cfg.runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
