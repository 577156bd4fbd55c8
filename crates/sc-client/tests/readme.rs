//! Runs the README's `demo` function against the real socketcluster-server, and checks that the
//! README holds exactly this code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

include!("support/readme_demo.rs");

#[path = "support/reference_launcher.rs"]
mod launcher;

#[test]
fn readme_holds_the_demo() {
    let readme = include_str!("../README.md");
    let demo = include_str!("support/readme_demo.rs");
    assert!(
        readme.contains(demo),
        "README.md must contain tests/support/readme_demo.rs verbatim"
    );
}

#[tokio::test]
async fn readme_demo_runs() {
    let server = common::Server::start(launcher::reference_server).await;
    let said = tokio::time::timeout(common::WAIT, demo(&server.url()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(said, "hello subscribers");
}
