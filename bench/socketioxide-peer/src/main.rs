//! Benchmark peer: the demo app's benchmark surface on socketioxide 0.18, the Rust server a Rust
//! user would pick instead. Same events as `bench/node/socketio-server.js`:
//! `echo` (ack: the data back), `ping` (count it), `count` (ack: pings so far), `subscribe`
//! (channel name; joins the room; ack), `unsubscribe`, `publish` (`{channel, data}`: every socket
//! in the room, the sender included, gets `publish` with the same object).
//!
//! Usage: `socketioxide-peer [--port 8000]`; prints `listening on ws://127.0.0.1:PORT/socket.io/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef};

fn on_connect(s: SocketRef) {
    let _ = s.emit("greet", "hello world");
    s.on("echo", async |Data::<Value>(data), ack: AckSender| {
        let _ = ack.send(&data);
    });
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    s.on("ping", async move || {
        c.fetch_add(1, Ordering::Relaxed);
    });
    s.on("count", async move |ack: AckSender| {
        let _ = ack.send(&count.load(Ordering::Relaxed));
    });
    s.on("subscribe", async |s: SocketRef, Data::<String>(channel), ack: AckSender| {
        s.join(channel);
        let _ = ack.send(&());
    });
    s.on("unsubscribe", async |s: SocketRef, Data::<String>(channel)| {
        s.leave(channel);
    });
    s.on("publish", async |s: SocketRef, Data::<Value>(msg)| {
        if let Some(channel) = msg.get("channel").and_then(Value::as_str) {
            let _ = s.within(channel.to_owned()).emit("publish", &msg).await;
        }
    });
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = match args.iter().position(|a| a == "--port") {
        Some(i) => args.get(i + 1).ok_or("--port needs a value")?.parse()?,
        None => 8000,
    };
    let (layer, io) = SocketIo::new_layer();
    io.ns("/", async |s: SocketRef| on_connect(s));
    let app = axum::Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on ws://{}/socket.io/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
