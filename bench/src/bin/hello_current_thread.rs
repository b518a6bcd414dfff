//! The hello-world of `hello.rs` on a current-thread runtime, as every function runs (see the
//! `shared` crate docs): a reference row, so that the cold-start table shows how much of the
//! functions' margin is the runtime flavour rather than their own init.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<_, Error>(event.payload)
    }))
    .await
}
