//! The client against the real socketcluster-server 20.0.1 (`tests/js/reference-server.js`, the
//! demo app). Needs node and `npm ci` in `tests/js`; fails (never skips) without them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;
use launcher::reference_server;

#[path = "support/reference_launcher.rs"]
mod launcher;

async fn server() -> Server {
    Server::start(reference_server).await
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
    common::buffer_while_disconnected(reference_server).await;
}

#[tokio::test]
async fn kill_and_restart() {
    let mut server = server().await;
    let took = common::kill_and_restart(&mut server).await;
    eprintln!("reference server: re-subscribed {took:?} after the restarted server listened");
}
