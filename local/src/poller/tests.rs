//! The per-batch faults of `LOCAL_CHAOS` (`dup`, `reorder`, `delay`), each forced (rate 1) on a
//! real queue of the emulator and a stand-in function that logs every batch it is given.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;

use super::*;
use crate::emulator;
use crate::runtime::{FunctionSpec, RuntimeOptions};

struct Rig {
    _emulator: emulator::Emulator,
    sqs: aws_sdk_sqs::Client,
    source: Source,
    chaos: Arc<Chaos>,
    log: PathBuf,
    _shutdown: watch::Sender<bool>,
    _done: mpsc::Receiver<()>,
}

/// An emulator, a queue (`.fifo` when `fifo`), and a source for it whose faults are `chaos`.
async fn rig(chaos: &str, fifo: bool) -> Rig {
    let emulator = emulator::spawn_on_free_port().expect("moto starts");
    let sdk = emulator::sdk_config(&emulator.endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let mut create = sqs
        .create_queue()
        .queue_name(if fifo { "work.fifo" } else { "work" });
    if fifo {
        create = create
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "true");
    }
    let queue_url = create.send().await.unwrap().queue_url.unwrap();
    let log = std::env::temp_dir().join(format!("batches-{}.jsonl", uuid::Uuid::new_v4()));
    let spec = FunctionSpec {
        logical_id: "Worker".into(),
        name: "cqrs-local-Worker".into(),
        arn: "arn:aws:lambda:us-east-1:123456789012:function:cqrs-local-Worker".into(),
        binary: concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/fake_function.py"
        )
        .into(),
        handler: "bootstrap".into(),
        timeout: Duration::from_secs(10),
        memory_mb: 128,
        env: BTreeMap::from([("FAKE_BATCH_LOG".into(), log.display().to_string())]),
    };
    let runtime = Arc::new(Runtime::new(
        vec![spec],
        &RuntimeOptions::new("us-east-1", &emulator.endpoint),
    ));
    let chaos = Arc::new(Chaos::parse(chaos, 11).unwrap());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (done, done_rx) = mpsc::channel(1);
    let source = Source {
        binding: SqsBinding {
            function: "Worker".into(),
            queue_arn: "arn:aws:sqs:us-east-1:123456789012:work".into(),
            queue_url,
            region: "us-east-1".into(),
            batch_size: 10,
            max_batching_window: Duration::ZERO,
            report_batch_item_failures: true,
            retry_delay_secs: None,
        },
        sqs: sqs.clone(),
        runtime,
        chaos: Some(Arc::clone(&chaos)),
        workers: AtomicUsize::new(1),
        shutdown,
        retired: Default::default(),
        done,
    };
    Rig {
        _emulator: emulator,
        sqs,
        source,
        chaos,
        log,
        _shutdown: shutdown_tx,
        _done: done_rx,
    }
}

impl Rig {
    async fn send(&self, bodies: &[String]) {
        for body in bodies {
            let mut send = self
                .sqs
                .send_message()
                .queue_url(&self.source.binding.queue_url)
                .message_body(body);
            if self.source.binding.queue_url.ends_with(".fifo") {
                send = send.message_group_id("g");
            }
            send.send().await.unwrap();
        }
    }

    /// Every batch the function was given, in order.
    fn batches(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Messages in the queue, visible or in flight.
    async fn depth(&self) -> usize {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.source.binding.queue_url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attributes = out.attributes.unwrap_or_default();
        [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|a| attributes[a].parse::<usize>().unwrap())
        .sum()
    }
}

fn bodies(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dup_fault_hands_a_batch_over_twice_then_deletes_it() {
    let rig = rig("dup:1", false).await;
    rig.send(&bodies(3)).await;
    let batch = receive(&rig.source, 10, 1).await.unwrap();
    let sent: Vec<String> = batch.iter().map(|m| m.body().unwrap().to_owned()).collect();
    process(&rig.source, batch).await;
    assert_eq!(rig.batches(), vec![sent.clone(), sent]);
    assert_eq!(rig.depth().await, 0, "deleted once both succeeded");
    assert_eq!(rig.chaos.injected()[&Fault::Dup], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reorder_fault_shuffles_a_standard_queues_batch_and_never_a_fifo_one() {
    for fifo in [false, true] {
        let rig = rig("reorder:1", fifo).await;
        rig.send(&bodies(10)).await;
        let batch = receive(&rig.source, 10, 1).await.unwrap();
        let received: Vec<String> = batch.iter().map(|m| m.body().unwrap().to_owned()).collect();
        assert_eq!(received.len(), 10);
        process(&rig.source, batch).await;
        let handed = rig.batches().remove(0);
        if fifo {
            assert_eq!(handed, received, "a FIFO batch keeps its order");
            assert_eq!(rig.chaos.injected()[&Fault::Reorder], 0);
        } else {
            assert_ne!(handed, received, "shuffled");
            let (mut a, mut b) = (handed.clone(), received.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b, "the same records");
            assert_eq!(rig.chaos.injected()[&Fault::Reorder], 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_fault_lets_another_consumer_take_the_batch_while_it_waits() {
    let rig = rig("delay:1", false).await;
    rig.send(&bodies(1)).await;
    let batch = receive(&rig.source, 10, 1).await.unwrap();
    let started = Instant::now();
    let (_, taken) = tokio::join!(process(&rig.source, batch), async {
        // The batch's visibility timeout (30 s) is over at once: another consumer gets it.
        rig.sqs
            .receive_message()
            .queue_url(&rig.source.binding.queue_url)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap()
    });
    assert_eq!(taken.messages().len(), 1, "visible again during the delay");
    assert_eq!(taken.messages()[0].body(), Some("m0"));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "handed over late"
    );
    assert_eq!(rig.batches(), vec![vec!["m0".to_owned()]]);
    assert_eq!(rig.chaos.injected()[&Fault::Delay], 1);
}
