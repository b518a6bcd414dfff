//! Fault injection at the HTTP transport of the real AWS SDK clients: every request still goes
//! to the emulator, but DynamoDB can be made to throttle or to lose writes to contention (as
//! real DynamoDB does when another transaction holds an item: moto serializes everything, so
//! it never does), and a "crash" can be triggered right after the emulator committed the n-th
//! transaction, which the test turns into the death of the worker by dropping its future there
//! (as a killed process, it never answers SQS). From the crash point until the test has seen
//! it, nothing more reaches the emulator: the dying invocation cannot slip out one more request
//! (over a kept-alive connection it would be written at once) before its future is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use tokio::sync::watch;

/// The switches of a faulty transport, shared with the test.
#[derive(Debug)]
pub struct Faults {
    /// DynamoDB requests still to answer with a throttling error (`usize::MAX`: all).
    throttle: AtomicUsize,
    /// DynamoDB requests answered with a throttling error so far.
    throttled: AtomicUsize,
    /// Requests the emulator answered with success so far, per operation (`PutItem`,
    /// `TransactWriteItems`, `PutEvents`, `SendMessage`, …).
    succeeded: Mutex<HashMap<String, usize>>,
    /// Fire [`Faults::crashed`] once this operation has succeeded this many times in all.
    crash_point: Mutex<Option<(String, usize)>>,
    crashed: watch::Sender<bool>,
    /// Set at the crash point, cleared when [`Faults::crashed`] has seen it: requests made in
    /// between (by the dying invocation) never leave.
    dead: AtomicBool,
    /// Operations answered as if their resource (bus, queue) had been deleted.
    missing: Mutex<Vec<String>>,
    /// The DynamoDB operation (e.g. `TransactWriteItems`) whose next requests lose to
    /// contention, and how many of them still will (`usize::MAX`: all).
    contend: Mutex<(String, usize)>,
    /// Requests answered with a contention error so far.
    contended: AtomicUsize,
    /// The operation whose next successful requests lose their answer, and how many still will.
    lose: Mutex<(String, usize)>,
}

impl Faults {
    /// Throttles the next `n` DynamoDB requests (`usize::MAX`: until told otherwise).
    pub fn throttle(&self, n: usize) {
        self.throttle.store(n, Ordering::SeqCst);
    }

    pub fn throttled(&self) -> usize {
        self.throttled.load(Ordering::SeqCst)
    }

    /// How many `operation` requests succeeded so far.
    pub fn succeeded(&self, operation: &str) -> usize {
        let succeeded = self.succeeded.lock().expect("faults lock");
        succeeded.get(operation).copied().unwrap_or(0)
    }

    /// Arms the crash: [`Faults::crashed`] completes once `n` more `operation` requests
    /// succeeded (the emulator committed them).
    pub fn crash_after(&self, operation: &str, n: usize) {
        let at = self.succeeded(operation) + n;
        *self.crash_point.lock().expect("faults lock") = Some((operation.to_owned(), at));
        self.dead.store(false, Ordering::SeqCst);
        self.crashed.send_replace(false);
    }

    /// Arms the crash after `n` more committed `TransactWriteItems`.
    pub fn crash_after_transactions(&self, n: usize) {
        self.crash_after("TransactWriteItems", n);
    }

    /// Answers every `operation` request (`PutEvents`, `SendMessage`) as if its bus or queue
    /// had been deleted (`missing: true`), or lets them through again.
    pub fn missing(&self, operation: &str, missing: bool) {
        let mut ops = self.missing.lock().expect("faults lock");
        ops.retain(|o| o != operation);
        if missing {
            ops.push(operation.to_owned());
        }
    }

    /// What EventBridge answers `PutEvents` on a deleted bus, and SQS any call on a deleted
    /// queue.
    fn missing_response(operation: &str) -> Response<SdkBody> {
        let (body, content_type) = if operation == "PutEvents" {
            (
                r#"{"__type":"ResourceNotFoundException","message":"Event bus does not exist."}"#,
                "application/x-amz-json-1.1",
            )
        } else {
            (
                r#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#,
                "application/x-amz-json-1.0",
            )
        };
        let mut response =
            Response::new(StatusCode::try_from(400).expect("400"), SdkBody::from(body));
        response.headers_mut().insert("content-type", content_type);
        response
    }

    /// Completes when the armed crash point is reached; from then on requests leave again (the
    /// test drops the dying invocation's future as this completes).
    pub async fn crashed(&self) {
        let mut rx = self.crashed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
        self.dead.store(false, Ordering::SeqCst);
    }

    /// Answers the next `n` DynamoDB `operation` requests (`usize::MAX`: all, until told
    /// otherwise) as DynamoDB does when another transaction holds one of their items: a
    /// `TransactWriteItems` is cancelled with the reason `TransactionConflict`, a single-item
    /// write fails with `TransactionConflictException`.
    pub fn contend(&self, operation: &str, n: usize) {
        *self.contend.lock().expect("faults lock") = (operation.to_owned(), n);
    }

    /// The next `n` `operation` requests (`PutEvents`, `SendMessage`, `PutItem`, …) reach the
    /// emulator, which applies them, but their caller gets a timeout instead of the answer, as
    /// when a connection drops after the request went out. The SDK retries a timeout: `n` at
    /// least its attempts (3) makes the caller see the failure.
    pub fn lose_answers(&self, operation: &str, n: usize) {
        *self.lose.lock().expect("faults lock") = (operation.to_owned(), n);
    }

    /// Whether the answer of a request to `operation` that succeeded is to be lost (and counts it).
    fn losing(&self, operation: &str) -> bool {
        let mut lose = self.lose.lock().expect("faults lock");
        let (target, left) = &mut *lose;
        if target != operation || *left == 0 {
            return false;
        }
        *left -= 1;
        true
    }

    pub fn contended(&self) -> usize {
        self.contended.load(Ordering::SeqCst)
    }

    /// Whether a request to `operation` is to lose to contention now (and counts it).
    fn contending(&self, operation: &str) -> bool {
        let mut contend = self.contend.lock().expect("faults lock");
        let (target, left) = &mut *contend;
        if target != operation || *left == 0 {
            return false;
        }
        if *left != usize::MAX {
            *left -= 1;
        }
        self.contended.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// DynamoDB's answer to a write that lost to another transaction.
    fn contention_response(operation: &str) -> Response<SdkBody> {
        let body = if operation == "TransactWriteItems" {
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","Message":"Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict]","CancellationReasons":[{"Code":"TransactionConflict","Message":"Transaction is ongoing for the item"}]}"#
        } else {
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#
        };
        Self::dynamodb_error(body)
    }

    /// The throttling error DynamoDB sends when a table or account is over its throughput.
    fn throttling_response() -> Response<SdkBody> {
        let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded."}"#;
        Self::dynamodb_error(body)
    }

    /// A DynamoDB client error: `400` with `body` (its JSON `__type` names the error) as
    /// `application/x-amz-json-1.0`.
    fn dynamodb_error(body: &'static str) -> Response<SdkBody> {
        let mut response =
            Response::new(StatusCode::try_from(400).expect("400"), SdkBody::from(body));
        response
            .headers_mut()
            .insert("content-type", "application/x-amz-json-1.0");
        response
    }
}

/// SDK configuration like the functions' own (`shared::aws::configure`: their timeouts and
/// retries, so backoff behaves as deployed) whose transport obeys the returned [`Faults`].
pub async fn faulty_sdk(endpoint: &str) -> (SdkConfig, Arc<Faults>) {
    // The functions' own HTTP client, as `shared::aws::configure` would install it.
    let inner = shared::http_client::SdkHttpClient::shared(std::time::Duration::from_millis(500));
    let faults = Arc::new(Faults {
        throttle: AtomicUsize::new(0),
        throttled: AtomicUsize::new(0),
        succeeded: Mutex::new(HashMap::new()),
        crash_point: Mutex::new(None),
        crashed: watch::channel(false).0,
        dead: AtomicBool::new(false),
        missing: Mutex::new(Vec::new()),
        contend: Mutex::new((String::new(), 0)),
        contended: AtomicUsize::new(0),
        lose: Mutex::new((String::new(), 0)),
    });
    let client = Faulty {
        inner,
        faults: Arc::clone(&faults),
    };
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ));
    // After `configure`, which installs the functions' own client: this one wraps it.
    let sdk = shared::aws::configure(loader)
        .http_client(SharedHttpClient::new(client))
        .load()
        .await;
    (sdk, faults)
}

#[derive(Debug, Clone)]
struct Faulty {
    inner: SharedHttpClient,
    faults: Arc<Faults>,
}

impl HttpClient for Faulty {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FaultyConnector {
            inner: self.inner.http_connector(settings, components),
            faults: Arc::clone(&self.faults),
        })
    }
}

#[derive(Debug)]
struct FaultyConnector {
    inner: SharedHttpConnector,
    faults: Arc<Faults>,
}

impl HttpConnector for FaultyConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .to_owned();
        let faults = Arc::clone(&self.faults);
        if faults.dead.load(Ordering::SeqCst) {
            return HttpConnectorFuture::new(std::future::pending());
        }
        // `DynamoDB_20120810.PutItem`, `AWSEvents.PutEvents`, `AmazonSQS.SendMessage`.
        let operation = target.rsplit('.').next().unwrap_or_default().to_owned();
        if faults
            .missing
            .lock()
            .expect("faults lock")
            .contains(&operation)
        {
            return HttpConnectorFuture::ready(Ok(Faults::missing_response(&operation)));
        }
        if target.starts_with("DynamoDB_") {
            let throttling = faults
                .throttle
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                    0 => None,
                    usize::MAX => Some(usize::MAX),
                    n => Some(n - 1),
                })
                .is_ok();
            if throttling {
                faults.throttled.fetch_add(1, Ordering::SeqCst);
                return HttpConnectorFuture::ready(Ok(Faults::throttling_response()));
            }
            if faults.contending(&operation) {
                return HttpConnectorFuture::ready(Ok(Faults::contention_response(&operation)));
            }
        }
        let sent = self.inner.call(request);
        HttpConnectorFuture::new(async move {
            let response = sent.await?;
            if response.status().is_success() {
                let done = {
                    let mut succeeded = faults.succeeded.lock().expect("faults lock");
                    let count = succeeded.entry(operation.clone()).or_default();
                    *count += 1;
                    *count
                };
                let crash_point = faults.crash_point.lock().expect("faults lock").clone();
                if crash_point == Some((operation.clone(), done)) {
                    faults.dead.store(true, Ordering::SeqCst);
                    faults.crashed.send_replace(true);
                }
                if faults.losing(&operation) {
                    return Err(ConnectorError::timeout(
                        "the answer was lost (test fault)".into(),
                    ));
                }
            }
            Ok(response)
        })
    }
}
