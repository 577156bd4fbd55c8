//! The Rust client (`sc-client`) against `socketcluster serve`: the same scenarios as
//! `crates/sc-client/tests/reference_server.rs` runs against the real socketcluster-server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../sc-client/tests/common/mod.rs"]
mod common;

use common::Server;
use tokio::process::Command;

fn serve(port: u16, key: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_socketcluster"));
    cmd.args([
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--auth-key",
        key,
    ]);
    cmd
}

async fn server() -> Server {
    Server::start(serve).await
}

#[tokio::test]
async fn handshake() {
    common::handshake(&server().await).await;
}

#[tokio::test]
async fn echo() {
    common::echo(&server().await).await;
}

#[tokio::test]
async fn fail() {
    common::fail(&server().await).await;
}

#[tokio::test]
async fn ping_count() {
    common::ping_count(&server().await).await;
}

#[tokio::test]
async fn login_whoami() {
    common::login_whoami(&server().await).await;
}

#[tokio::test]
async fn private_channel() {
    common::private_channel(&server().await).await;
}

#[tokio::test]
async fn pubsub() {
    common::pubsub(&server().await).await;
}

#[tokio::test]
async fn buffer_while_disconnected() {
    common::buffer_while_disconnected(serve).await;
}

#[tokio::test]
async fn kill_and_restart() {
    let mut server = server().await;
    let took = common::kill_and_restart(&mut server).await;
    eprintln!("socketcluster serve: re-subscribed {took:?} after the restarted server listened");
}
