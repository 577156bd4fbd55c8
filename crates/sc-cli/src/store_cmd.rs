//! `socketcluster store`: one store server process, the nData-style store that workers share
//! (session data and cross-worker pub/sub). It speaks a subset of the Redis protocol, so
//! `redis-cli -p 6380` can inspect it and `redis-benchmark` can measure it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sc_store::server::{self, ServerConfig};
use tracing_subscriber::EnvFilter;

/// Exit code of a bad option (EX_USAGE), as for the other subcommands.
const EXIT_CONFIG: u8 = 64;

/// Options of `socketcluster store`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct StoreArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port to listen on; 0 picks a free one
    #[arg(long, default_value_t = 6380)]
    pub(crate) port: u16,
    /// Secret that clients must send with the RESP `AUTH` command before any other command
    #[arg(long, env = "SC_STORE_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,
    /// Largest key or value accepted, in bytes
    #[arg(long, default_value_t = 32 << 20, value_name = "BYTES")]
    pub(crate) max_bulk_len: usize,
    /// Most pending output per connection, in bytes; a subscriber above it is disconnected
    #[arg(long, default_value_t = 32 << 20, value_name = "BYTES")]
    pub(crate) max_output_buffer: usize,
    /// Seconds a connection's pending output may make no progress before it is closed
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub(crate) write_stall_timeout: u64,
    /// Most simultaneous client connections
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_clients: usize,
    /// With --secret: milliseconds a connection has to authenticate before it is closed (until
    /// then it may only send small requests: 10 arguments, 16 KiB each, 64 KiB pending)
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub(crate) auth_timeout_ms: u64,
}

/// Checks the options and turns them into the server's config: an error here is a usage error.
pub(crate) fn config(args: &StoreArgs) -> Result<ServerConfig, String> {
    if args.secret.as_deref() == Some("") {
        return Err("--secret must not be empty".to_owned());
    }
    if args.max_bulk_len == 0 || args.max_output_buffer == 0 || args.max_clients == 0 {
        return Err(
            "--max-bulk-len, --max-output-buffer and --max-clients must be positive".to_owned(),
        );
    }
    if args.auth_timeout_ms == 0 {
        return Err("--auth-timeout-ms must be greater than 0".to_owned());
    }
    if args.write_stall_timeout == 0 {
        return Err("--write-stall-timeout must be at least 1 second".to_owned());
    }
    Ok(ServerConfig {
        secret: args.secret.clone(),
        max_bulk_len: args.max_bulk_len,
        max_output_buffer: args.max_output_buffer,
        write_stall_timeout: Duration::from_secs(args.write_stall_timeout),
        max_clients: args.max_clients,
        auth_timeout: Duration::from_millis(args.auth_timeout_ms),
        ..ServerConfig::default()
    })
}

/// The `store` subcommand: checks the options (a problem exits with code 64), initialises
/// tracing, binds the listener, prints `store listening on <addr>` and serves until the process
/// ends.
///
/// The server runs its own single-threaded runtime: call this outside any tokio runtime.
pub(crate) fn run(args: StoreArgs) -> ExitCode {
    let config = match config(&args) {
        Ok(c) => c,
        Err(m) => {
            eprintln!("error: {m}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();
    match serve(&args, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &StoreArgs, config: ServerConfig) -> anyhow::Result<()> {
    let addr = format!("{}:{}", args.host, args.port);
    let listener =
        std::net::TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "store listening on {local}")?;
        out.flush()?;
    }
    server::run(listener, config).context("store server failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn defaults_and_validation() {
        let cli = Cli::try_parse_from(["store"]).unwrap();
        assert_eq!(cli.store.host, "127.0.0.1");
        assert_eq!(cli.store.port, 6380);
        let cfg = config(&cli.store).unwrap();
        assert_eq!(cfg.max_clients, 10_000);
        let cli = Cli::try_parse_from(["store", "--secret", ""]).unwrap();
        assert!(config(&cli.store).is_err());
        let cli = Cli::try_parse_from(["store", "--port", "7000", "--secret", "s"]).unwrap();
        assert_eq!(config(&cli.store).unwrap().secret.as_deref(), Some("s"));
    }
}
