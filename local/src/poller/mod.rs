//! SQS event sources: long-poll each queue, invoke its function with Lambda's SQS event,
//! delete what succeeded, leave the rest to the queue's visibility timeout and redrive policy.
//!
//! Each source starts with one polling worker; a worker that receives a full batch starts
//! another (up to [`MAX_WORKERS_PER_SOURCE`]), and an extra worker that receives nothing
//! retires, so a backlog drains concurrently while an idle queue costs one long poll.
//! On shutdown workers stop polling but finish the batch in hand. Retired pollers (a template
//! reload replaced their bindings) also let a receive already under way complete and settle
//! its batch, so no message is left in flight with nobody to settle it.

mod event;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use tokio::sync::{mpsc, watch};

pub use event::{failed_ids, sqs_event};

use crate::chaos::{Chaos, Fault};
use crate::runtime::Runtime;

/// Concurrent pollers per event source at most.
pub const MAX_WORKERS_PER_SOURCE: usize = 3;
/// When set, failed messages become visible again after this many seconds instead of the
/// queue's visibility timeout (tests use it not to wait 60 s per retry).
pub const RETRY_DELAY_ENV: &str = "LOCAL_RETRY_DELAY_SECONDS";
/// SQS's longest long poll.
const MAX_WAIT_SECS: i32 = 20;

/// One SQS event source, resolved against the provisioned stack.
#[derive(Debug, Clone, PartialEq)]
pub struct SqsBinding {
    /// Logical id of the function to invoke.
    pub function: String,
    pub queue_url: String,
    pub queue_arn: String,
    pub region: String,
    pub batch_size: u32,
    pub max_batching_window: Duration,
    pub report_batch_item_failures: bool,
    /// `LOCAL_RETRY_DELAY_SECONDS`, if set.
    pub retry_delay_secs: Option<i32>,
}

struct Source {
    binding: SqsBinding,
    sqs: aws_sdk_sqs::Client,
    runtime: Arc<Runtime>,
    chaos: Option<Arc<Chaos>>,
    workers: AtomicUsize,
    shutdown: watch::Receiver<bool>,
    /// Set by [`Pollers::retire`]: no new receive starts.
    retired: Arc<AtomicBool>,
    /// Each worker holds a clone; [`Pollers::wait`] returns when all are dropped.
    done: mpsc::Sender<()>,
}

/// The running pollers.
pub struct Pollers {
    done: mpsc::Receiver<()>,
    retired: Arc<AtomicBool>,
}

impl Pollers {
    /// Starts one worker per binding. Setting `shutdown` to `true` stops them. `chaos` draws
    /// the `dup`, `reorder` and `delay` faults per batch ([`crate::chaos`]).
    pub fn start(
        bindings: Vec<SqsBinding>,
        sqs: &aws_sdk_sqs::Client,
        runtime: &Arc<Runtime>,
        chaos: Option<Arc<Chaos>>,
        shutdown: watch::Receiver<bool>,
    ) -> Pollers {
        let (done_tx, done) = mpsc::channel(1);
        let retired = Arc::new(AtomicBool::new(false));
        for binding in bindings {
            let source = Arc::new(Source {
                binding,
                sqs: sqs.clone(),
                runtime: Arc::clone(runtime),
                chaos: chaos.clone(),
                workers: AtomicUsize::new(1),
                shutdown: shutdown.clone(),
                retired: Arc::clone(&retired),
                done: done_tx.clone(),
            });
            tokio::spawn(worker(source, true));
        }
        Pollers { done, retired }
    }

    /// Stops receiving, gently: a worker waiting on a receive lets it complete and settles the
    /// batch it returns (deleted or returned as usual), then stops; none starts another. For a
    /// template reload, whose new pollers start at once beside them. Shutdown (the `shutdown`
    /// signal) still stops them, as it does the others.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Waits until every worker has stopped (after shutdown was signalled).
    pub async fn wait(mut self) {
        while self.done.recv().await.is_some() {}
    }
}

/// The retry delay from `LOCAL_RETRY_DELAY_SECONDS`, if set to a number.
pub fn retry_delay_from_env() -> Option<i32> {
    std::env::var(RETRY_DELAY_ENV).ok()?.trim().parse().ok()
}

/// A polling loop. Boxed because workers spawn workers (a recursive future).
fn worker(source: Arc<Source>, primary: bool) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(work(source, primary))
}

async fn work(source: Arc<Source>, primary: bool) {
    let _done = source.done.clone();
    let mut shutdown = source.shutdown.clone();
    let b = &source.binding;
    loop {
        if *shutdown.borrow() || source.retired.load(Ordering::Acquire) {
            break;
        }
        let batch = tokio::select! {
            batch = receive_batch(&source) => batch,
            _ = shutdown.changed() => break,
        };
        let messages = match batch {
            Ok(m) => m,
            Err(e) => {
                eprintln!("[poller] {}: ReceiveMessage failed: {e}", b.function);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        if messages.is_empty() {
            if primary {
                continue;
            }
            break;
        }
        let full = messages.len() >= b.batch_size.min(10) as usize;
        if full && source.workers.load(Ordering::Acquire) < MAX_WORKERS_PER_SOURCE {
            source.workers.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(worker(Arc::clone(&source), false));
        }
        process(&source, messages).await;
    }
    source.workers.fetch_sub(1, Ordering::AcqRel);
}

/// Receives up to `BatchSize` messages, waiting up to `MaximumBatchingWindowInSeconds` for
/// more once the first arrive.
async fn receive_batch(source: &Source) -> Result<Vec<Message>, String> {
    let b = &source.binding;
    let want = b.batch_size as usize;
    let mut messages = receive(source, want, MAX_WAIT_SECS).await?;
    let window_end = Instant::now() + b.max_batching_window;
    while !messages.is_empty() && messages.len() < want {
        let left = window_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let wait = i32::try_from(left.as_secs().min(MAX_WAIT_SECS as u64)).unwrap_or(0);
        let more = receive(source, want - messages.len(), wait).await?;
        if more.is_empty() && wait == 0 {
            break;
        }
        messages.extend(more);
    }
    Ok(messages)
}

async fn receive(source: &Source, max: usize, wait_secs: i32) -> Result<Vec<Message>, String> {
    let out = source
        .sqs
        .receive_message()
        .queue_url(&source.binding.queue_url)
        .max_number_of_messages(max.clamp(1, 10) as i32)
        .wait_time_seconds(wait_secs)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
    Ok(out.messages.unwrap_or_default())
}

/// Invokes the function with the batch and settles each message.
async fn process(source: &Source, mut messages: Vec<Message>) {
    let b = &source.binding;
    let mut dup = false;
    if let Some(chaos) = &source.chaos {
        let what = format!("{} batch of {}", b.function, messages.len());
        if !b.queue_url.ends_with(".fifo") && chaos.inject(Fault::Reorder, &what) {
            chaos.shuffle(&mut messages);
        }
        if chaos.inject(Fault::Delay, &what) {
            let all: Vec<&Message> = messages.iter().collect();
            make_visible(source, &all, 0).await;
            let delay = chaos.between(Duration::from_millis(200), Duration::from_secs(1));
            tokio::time::sleep(delay).await;
        }
        dup = chaos.inject(Fault::Dup, &what);
    }
    let event = sqs_event(&messages, &b.queue_arn, &b.region);
    let ids: Vec<String> = messages
        .iter()
        .filter_map(|m| m.message_id().map(str::to_string))
        .collect();
    // The event is cloned only for a duplicate hand-over (`dup`), never on the common path.
    let again = dup.then(|| event.clone());
    let outcome = source.runtime.invoke(&b.function, event).await;
    let mut failed = failed_ids(&outcome, &ids, b.report_batch_item_failures);
    if let Some(event) = again {
        let again = source.runtime.invoke(&b.function, event).await;
        failed.extend(failed_ids(&again, &ids, b.report_batch_item_failures));
    }
    if !failed.is_empty() {
        eprintln!(
            "[poller] {}: {} of {} messages left in the queue for retry",
            b.function,
            failed.len(),
            messages.len()
        );
    }
    let (bad, good): (Vec<&Message>, Vec<&Message>) = messages
        .iter()
        .partition(|m| m.message_id().is_some_and(|id| failed.contains(id)));
    delete(source, &good).await;
    if let Some(delay) = b.retry_delay_secs {
        make_visible(source, &bad, delay).await;
    }
}

/// SQS's most entries in one batch call.
const BATCH_LIMIT: usize = 10;

async fn delete(source: &Source, messages: &[&Message]) {
    in_batches(source, "DeleteMessageBatch", messages, |chunk| async move {
        let entries = batch_entries(chunk, |id, handle| {
            DeleteMessageBatchRequestEntry::builder()
                .id(id)
                .set_receipt_handle(handle)
                .build()
        });
        let call = source.sqs.delete_message_batch().set_entries(Some(entries));
        let out = call.queue_url(&source.binding.queue_url).send().await;
        out.map(|o| o.failed().len())
    })
    .await;
}

async fn make_visible(source: &Source, messages: &[&Message], delay: i32) {
    in_batches(
        source,
        "ChangeMessageVisibilityBatch",
        messages,
        |chunk| async move {
            let call = source.sqs.change_message_visibility_batch();
            let call = call.set_entries(Some(visibility_entries(chunk, delay)));
            let out = call.queue_url(&source.binding.queue_url).send().await;
            out.map(|o| o.failed().len())
        },
    )
    .await;
}

/// `ChangeMessageVisibilityBatch` entries making `messages` (at most [`BATCH_LIMIT`]) visible
/// again after `delay` seconds.
pub(crate) fn visibility_entries(
    messages: &[&Message],
    delay: i32,
) -> Vec<ChangeMessageVisibilityBatchRequestEntry> {
    batch_entries(messages, |id, handle| {
        ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(id)
            .set_receipt_handle(handle)
            .visibility_timeout(delay)
            .build()
    })
}

/// The entries of one batch call over `messages`: `entry` of each message's index (its id in
/// the batch) and receipt handle; an entry the SDK refuses to build is left out.
fn batch_entries<T, E>(
    messages: &[&Message],
    entry: impl Fn(String, Option<String>) -> Result<T, E>,
) -> Vec<T> {
    messages
        .iter()
        .enumerate()
        .filter_map(|(i, m)| entry(i.to_string(), m.receipt_handle().map(str::to_string)).ok())
        .collect()
}

/// Runs the batch call `op` (named `name` in what is reported) over `messages`, a chunk of at
/// most [`BATCH_LIMIT`] at a time; `op` gives the number of entries that failed, reported with
/// any error of the call itself.
async fn in_batches<'a, F, Fut, E>(source: &Source, name: &str, messages: &'a [&'a Message], op: F)
where
    F: Fn(&'a [&'a Message]) -> Fut,
    Fut: Future<Output = Result<usize, E>>,
    E: std::error::Error,
{
    for chunk in messages.chunks(BATCH_LIMIT) {
        report_batch_failure(source, name, op(chunk).await);
    }
}

fn report_batch_failure<E: std::error::Error>(source: &Source, op: &str, result: Result<usize, E>) {
    match result {
        Ok(0) => {}
        Ok(n) => eprintln!(
            "[poller] {}: {op}: {n} entries failed",
            source.binding.function
        ),
        Err(e) => eprintln!(
            "[poller] {}: {op} failed: {}",
            source.binding.function,
            aws_sdk_sqs::error::DisplayErrorContext(&e)
        ),
    }
}

#[cfg(test)]
mod tests;
