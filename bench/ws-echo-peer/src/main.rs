//! Benchmark reference for scale: a minimal tokio WebSocket server (tokio-tungstenite with its
//! default settings) with no protocol at all. Every text or binary message comes back unchanged
//! on the same connection; nothing else is parsed, counted or routed. `socketcluster bench
//! --protocol ws-echo` drives it with the same frames it sends a SocketCluster server (an invoke
//! comes back as itself), so the report can show a server with no protocol work beside the real
//! ones.
//!
//! With `--broadcast` it is the bare broadcast server of the fan-out runs instead: a message that
//! starts with `{"event":"#publish"` goes, unchanged, to every other connection (one
//! `tokio::sync::broadcast` channel, a task per connection writing what it receives, what has
//! piled up with one flush); any other message is echoed as above (so a `#subscribe` gets its
//! "reply").
//!
//! Usage: `ws-echo-peer [--port 8000] [--broadcast]`; prints `listening on ws://127.0.0.1:PORT/`.

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

async fn echo(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut tx, rx) = ws.split();
    // `forward` writes each message as it comes and flushes when the reader has nothing more: a
    // burst of messages goes out with one write.
    let echoed = rx.filter_map(|m| async move {
        match m {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => Some(Ok(m)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        }
    });
    let _ = echoed.forward(&mut tx).await;
}

/// A publish, with the id of the connection it came from.
type Hub = broadcast::Sender<(u64, Message)>;

fn is_publish(m: &Message) -> bool {
    matches!(m, Message::Text(t) if t.as_str().starts_with("{\"event\":\"#publish\""))
}

async fn broadcast_conn(stream: TcpStream, hub: Hub, id: u64) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let mut publishes = hub.subscribe();
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(m)) if is_publish(&m) => {
                    let _ = hub.send((id, m));
                }
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            p = publishes.recv() => {
                // What else is already there goes out with it: one write for the lot.
                let mut next = p;
                loop {
                    match next {
                        Ok((from, m)) if from != id => {
                            if ws.feed(m).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                    next = match publishes.try_recv() {
                        Ok(item) => Ok(item),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            Err(broadcast::error::RecvError::Lagged(n))
                        }
                        Err(_) => break,
                    };
                }
                if ws.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).ok_or("--port needs a value")?.parse()?,
        None => 8000,
    };
    let hub = args
        .iter()
        .any(|a| a == "--broadcast")
        .then(|| broadcast::channel::<(u64, Message)>(4096).0);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on ws://{}/", listener.local_addr()?);
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    next_id += 1;
                    match &hub {
                        Some(hub) => tokio::spawn(broadcast_conn(stream, hub.clone(), next_id)),
                        None => tokio::spawn(echo(stream)),
                    };
                }
                Err(e) => {
                    // Out of descriptors, say: back off instead of spinning.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
