//! The unmetered enrichment API alone, on `127.0.0.1:9000`: an upstream for
//! `creditgate proxy --routes docs/routes/smarte.toml --upstream http://127.0.0.1:9000`
//! (README, "Gateways").

#[path = "common/enrichment.rs"]
mod enrichment;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await?;
    println!("enrichment API on http://{}", listener.local_addr()?);
    axum::serve(listener, enrichment::api()).await?;
    Ok(())
}
