use sc_client::{Client, Error};
use serde_json::json;

/// Connects, calls procedures, logs in, and publishes to a channel it is subscribed to.
async fn demo(url: &str) -> Result<String, Error> {
    let client = Client::builder(url).connect().await?;

    // Invoke a procedure, typed with serde (raw JSON works too: `invoke_raw`).
    let echoed: serde_json::Value = client.invoke("echo", &json!({"hello": "world"})).await?;
    assert_eq!(echoed["hello"], "world");

    // Server errors come back as the error object the server sent.
    let err = client.invoke::<_, ()>("fail", &()).await.unwrap_err();
    assert_eq!(err.name(), "BadRequest");

    // Log in: the server answers with `#setAuthToken`, which the client stores.
    let mut events = client.events();
    client.invoke::<_, ()>("login", &json!({"username": "ann"})).await?;
    while !client.is_authenticated() {
        events.recv().await;
    }

    // Subscribe, publish, receive (the publisher gets its own message too).
    let mut news = client.subscribe("news");
    news.wait_subscribed().await?;
    client.invoke_publish("news", &"hello subscribers").await?;
    let message = news.next_message().await.ok_or(Error::Closed)?;

    client.disconnect();
    message.json()
}
