#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), shared::lambda::Error> {
    shared::lambda::serve_http(conversations_api::init, conversations_api::handle).await
}
