#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), shared::lambda::Error> {
    shared::lambda::serve_scheduled(
        conversations_worker::sweeper::init,
        conversations_worker::sweeper::handle,
    )
    .await
}
