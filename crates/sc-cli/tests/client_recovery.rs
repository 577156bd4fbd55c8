//! Missed-message recovery (issue 19) end to end: `sc-client` against `socketcluster serve` with
//! `[[worker.history]]` rules, through a TCP relay that the test cuts and keeps refusing for 2 s
//! while 1,000 messages are published, so the subscriber's outage is a real one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../sc-client/tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{Server, WAIT, next_event};
use futures_util::{FutureExt as _, StreamExt as _};
use sc_client::{Channel, ChannelEvent, Client, ConnectionEvent, Events, Position, Receiver};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

/// How long the subscriber stays offline.
const OUTAGE: Duration = Duration::from_secs(2);
/// Messages published while it is offline.
const MISSED: u64 = 1_000;
/// Messages it gets before the outage, and live ones after it.
const BEFORE: u64 = 10;
const AFTER: u64 = 5;

/// The config file of the server on `port`: channels `long*` keep 1,000 messages, `short*` 10.
fn config_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!(
        "sc-client-recovery-{}-{port}.toml",
        std::process::id()
    ))
}

fn serve(port: u16, key: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_socketcluster"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config_path(port))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--auth-key", key]);
    cmd
}

async fn server() -> Server {
    let port = common::free_port();
    let config = r#"
[[worker.history]]
channel = "short*"
max_len = 10
max_age_ms = 300000

[[worker.history]]
channel = "long*"
max_len = 1000
max_age_ms = 300000
"#;
    std::fs::write(config_path(port), config).unwrap();
    let server = Server::start_on(serve, port).await;
    let _ = std::fs::remove_file(config_path(port));
    server
}

enum RelayCommand {
    /// Close every relayed connection (both sides) and refuse new ones.
    Cut(oneshot::Sender<()>),
    /// Relay new connections again.
    Restore(oneshot::Sender<()>),
}

/// A TCP relay on 127.0.0.1 in front of the server.
struct Relay {
    addr: SocketAddr,
    control: mpsc::UnboundedSender<RelayCommand>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (control, mut commands) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut refusing = false;
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    command = commands.recv() => match command {
                        Some(RelayCommand::Cut(done)) => {
                            refusing = true;
                            conns.abort_all();
                            while conns.join_next().await.is_some() {}
                            let _ = done.send(());
                        }
                        Some(RelayCommand::Restore(done)) => {
                            refusing = false;
                            let _ = done.send(());
                        }
                        None => return,
                    },
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        if refusing {
                            // Closed at once: the client's attempt fails.
                            drop(client);
                            continue;
                        }
                        conns.spawn(async move {
                            let mut upstream = TcpStream::connect(server).await?;
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Relay { addr, control }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    async fn cut(&self) {
        let (done, wait) = oneshot::channel();
        self.control.send(RelayCommand::Cut(done)).unwrap();
        wait.await.unwrap();
    }

    async fn restore(&self) {
        let (done, wait) = oneshot::channel();
        self.control.send(RelayCommand::Restore(done)).unwrap();
        wait.await.unwrap();
    }
}

/// Publishes `{"n":n}` for each `n` in `range` to `channel`, and waits until the server has
/// taken the last one (the earlier ones went before it on the same socket).
async fn publish(publisher: &Client, channel: &str, range: std::ops::RangeInclusive<u64>) {
    let last = *range.end();
    for n in range {
        if n == last {
            timeout(WAIT, publisher.invoke_publish(channel, &json!({ "n": n })))
                .await
                .unwrap()
                .unwrap();
        } else {
            publisher.publish(channel, &json!({ "n": n })).unwrap();
        }
    }
}

/// The next event of `ch`, which must be message `n` at offset `n` of `epoch`.
async fn expect_message(ch: &mut Channel, n: u64, epoch: &str) {
    let event = timeout(WAIT, ch.next())
        .await
        .unwrap_or_else(|_| panic!("message {n} of {} did not come", ch.name()));
    match event {
        Some(ChannelEvent::Message(m)) => {
            let got: serde_json::Value = m.json().unwrap();
            assert_eq!(got, json!({ "n": n }), "{}: out of order", ch.name());
            assert_eq!(
                m.position(),
                Some(&Position::new(n, epoch)),
                "{}: message {n}",
                ch.name()
            );
        }
        other => panic!("{}: expected message {n}, got {other:?}", ch.name()),
    }
}

async fn wait_for(events: &mut Events, want: impl Fn(&ConnectionEvent) -> bool) {
    loop {
        if want(&next_event(events).await) {
            return;
        }
    }
}

/// A subscriber back from its outage.
struct Back {
    /// Its channel: the next events are what the resubscribe brought.
    ch: Channel,
    publisher: Client,
    /// The epoch of the channel's history.
    epoch: String,
    /// When the relay let connections through again.
    restored: Instant,
    /// The `#gap` notices the subscriber got.
    gaps: Receiver,
    _relay: Relay,
}

/// Subscribes to `channel` through a relay, receives `BEFORE` messages, goes offline for 2 s
/// while `MISSED` are published, and comes back.
async fn offline_while_published(server: &Server, channel: &str) -> Back {
    let relay = Relay::start(([127, 0, 0, 1], server.port).into()).await;
    let subscriber = Client::builder(&relay.url()).connect().await.unwrap();
    let publisher = Client::builder(&server.url()).connect().await.unwrap();
    let mut events = subscriber.events();
    let gaps = subscriber.receiver("#gap");

    let mut ch = subscriber.subscribe(channel);
    timeout(WAIT, ch.wait_subscribed()).await.unwrap().unwrap();
    let start = ch
        .position()
        .expect("the subscribe reply carries a position");
    assert_eq!(start.offset, 0, "a new channel starts at offset 0");
    let epoch = start.epoch;
    publish(&publisher, channel, 1..=BEFORE).await;
    for n in 1..=BEFORE {
        expect_message(&mut ch, n, &epoch).await;
    }

    relay.cut().await;
    let cut = Instant::now();
    wait_for(&mut events, |e| matches!(e, ConnectionEvent::Closed { .. })).await;
    publish(&publisher, channel, BEFORE + 1..=BEFORE + MISSED).await;
    let published = cut.elapsed();
    assert!(published < OUTAGE, "publishing took {published:?}");
    // The outage is the scenario itself, not a synchronisation.
    tokio::time::sleep_until(cut + OUTAGE).await;
    relay.restore().await;
    let restored = Instant::now();
    wait_for(&mut events, |e| matches!(e, ConnectionEvent::Open { .. })).await;
    eprintln!(
        "{channel}: {MISSED} published in {published:?} while offline; reconnected {:?} after the relay came back",
        restored.elapsed()
    );
    Back {
        ch,
        publisher,
        epoch,
        restored,
        gaps,
        _relay: relay,
    }
}

#[tokio::test]
async fn recovers_every_missed_message_in_order_exactly_once() {
    let server = server().await;
    let channel = "long-news";
    let mut back = offline_while_published(&server, channel).await;
    let (ch, epoch) = (&mut back.ch, &*back.epoch);

    // All 1,000, in order, no gap, each once; then live messages follow seamlessly.
    for n in BEFORE + 1..=BEFORE + MISSED {
        expect_message(ch, n, epoch).await;
    }
    eprintln!(
        "{channel}: caught up {:?} after the relay came back",
        back.restored.elapsed()
    );
    let last = BEFORE + MISSED;
    publish(&back.publisher, channel, last + 1..=last + AFTER).await;
    for n in last + 1..=last + AFTER {
        expect_message(ch, n, epoch).await;
    }
    assert_eq!(ch.position(), Some(Position::new(last + AFTER, epoch)));
    assert!(
        back.gaps.recv().now_or_never().is_none(),
        "a #gap notice came"
    );
}

#[tokio::test]
async fn a_gap_then_the_kept_messages_then_live_ones_when_the_history_is_too_short() {
    let server = server().await;
    let channel = "short-news";
    let mut back = offline_while_published(&server, channel).await;
    let (ch, epoch) = (&mut back.ch, &*back.epoch);

    // The history keeps 10: a gap, then the last 10 of the missed ones, then live ones.
    let event = timeout(WAIT, ch.next()).await.unwrap();
    assert_eq!(event, Some(ChannelEvent::Gap));
    let notice = timeout(WAIT, back.gaps.recv()).await.unwrap().unwrap();
    let notice: serde_json::Value = notice.json().unwrap();
    let last = BEFORE + MISSED;
    assert_eq!(
        notice,
        json!({"channel": channel, "offset": last - 10, "epoch": epoch})
    );
    for n in last - 9..=last {
        expect_message(ch, n, epoch).await;
    }
    publish(&back.publisher, channel, last + 1..=last + AFTER).await;
    for n in last + 1..=last + AFTER {
        expect_message(ch, n, epoch).await;
    }
}
