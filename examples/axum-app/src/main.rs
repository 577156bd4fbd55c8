//! Serves the example on 127.0.0.1:3000.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (app, _handle) = example_axum_app::app()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app).await?;
    Ok(())
}
