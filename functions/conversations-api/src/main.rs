use conversations_api::{AwsApp, Config, handle};
use lambda_http::{Error, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let vars = shared::config::Vars::process();
    let config = Config::from_vars(&vars)?;
    let sdk = shared::aws::load().await;
    let app = &AwsApp::new(&sdk, config);
    run(service_fn(move |req| async move {
        Ok::<_, std::convert::Infallible>(handle(app, req).await)
    }))
    .await
}
