#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), shared::lambda::Error> {
    shared::lambda::serve_http(ledger_api::init, ledger_api::handle).await
}
