//! How to start the reference server (`tests/js/reference-server.js` on socketcluster-server
//! 20.0.1). Fails, never skips, when node or the npm packages are missing.

use std::path::PathBuf;

use tokio::process::Command;

const NODE: &str = "/usr/bin/node";

pub(crate) fn reference_server(port: u16, key: &str) -> Command {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/js");
    let script = dir.join("reference-server.js");
    assert!(
        std::path::Path::new(NODE).exists(),
        "node is required at {NODE} for these tests"
    );
    assert!(script.exists(), "missing {}", script.display());
    assert!(
        dir.join("node_modules/socketcluster-server/package.json")
            .exists(),
        "run `npm ci` in {} first",
        dir.display()
    );
    let mut cmd = Command::new(NODE);
    cmd.arg(script).args([
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--auth-key",
        key,
    ]);
    cmd
}
