//! Benchmark reference for scale: a minimal tokio WebSocket echo server (tokio-tungstenite with its
//! default settings), with no protocol at all. Every text or binary message comes back unchanged
//! on the same connection; nothing else is parsed, counted or routed. `socketcluster bench
//! --protocol ws-echo` drives it with the same frames it sends a SocketCluster server (an invoke
//! comes back as itself), so the report can show a server with no protocol work beside the real
//! ones.
//!
//! Usage: `ws-echo-peer [--port 8000]`; prints `listening on ws://127.0.0.1:PORT/`.

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).ok_or("--port needs a value")?.parse()?,
        None => 8000,
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on ws://{}/", listener.local_addr()?);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(echo(stream));
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
