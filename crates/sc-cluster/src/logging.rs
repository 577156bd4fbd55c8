//! The log lines of the master and its children.

/// Log lines on stderr, filtered by `RUST_LOG` (default `info`). The master's own lines start
/// with `[master]`; a child's lines reach the master's stderr with `[ROLE ID]` in front.
pub(crate) fn init(master: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A child's stderr is a pipe to the master, which puts `[ROLE ID]` in front of each line.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || Prefixed(if master { "[master] " } else { "" }))
        .with_ansi(
            master
                && std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .try_init();
}

/// Stderr with a prefix in front of each event (the formatter writes an event at once).
struct Prefixed(&'static str);

impl std::io::Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        err.write_all(self.0.as_bytes())?;
        err.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
