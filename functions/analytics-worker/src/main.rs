use analytics_worker::{AwsApp, Config, handle};
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let vars = shared::config::Vars::process();
    let config = Config::from_vars(&vars)?;
    let sdk = shared::aws::load().await;
    let app = &AwsApp::new(&sdk, config);
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(handle(app, event.payload).await)
    }))
    .await
}
