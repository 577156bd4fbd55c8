//! A bare store server process:
//! `sc-store-server [--host H] [--port P] [--secret S] [--auth-timeout-ms MS]`.
//!
//! The `socketcluster store` command is the user-facing entry point; this binary exists so the
//! crate's own tests can start, kill and restart real store processes. Once listening it prints
//! `listening on <addr>` on stdout.

use std::io::Write;

fn main() -> std::io::Result<()> {
    let mut host = "127.0.0.1".to_owned();
    let mut port = "6380".to_owned();
    let mut config = sc_store::server::ServerConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{flag} needs a value"),
            )
        })?;
        match flag.as_str() {
            "--host" => host = value,
            "--port" => port = value,
            "--secret" => config.secret = Some(value),
            "--auth-timeout-ms" => {
                let ms = value.parse().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("--auth-timeout-ms needs a number of milliseconds, not {value:?}"),
                    )
                })?;
                config.auth_timeout = std::time::Duration::from_millis(ms);
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "unknown flag {flag}; usage: sc-store-server [--host H] [--port P] [--secret S] [--auth-timeout-ms MS]"
                    ),
                ));
            }
        }
    }
    let listener = std::net::TcpListener::bind(format!("{host}:{port}"))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", listener.local_addr()?)?;
    stdout.flush()?;
    drop(stdout);
    sc_store::server::run(listener, config)
}
