//! A bounded in-memory record of what the runtime did: every function instance (alive or
//! recently exited, busy or idle) and the recent invocations of every function with the
//! figures of their `REPORT` line, what triggered them, the correlation ids they carried and
//! the log lines their instance printed while they ran. The dashboard (README.md §Dashboard)
//! reads it; nothing else depends on it.
//!
//! Layout: one mutex over all of it, held only for map and queue updates (never across an
//! await), so the runtime's hot path pays a lock and a few pushes per invocation and per log
//! line. Invocations sit in one queue in start order; [`Limits`] bound it per function, the
//! lines per invocation and the log bytes overall (the oldest invocations lose their lines
//! first), so a long-running runner's memory stays flat.
//!
//! Log lines are attributed by instance: an instance handles one invocation at a time, so a
//! line belongs to the last invocation started on it. Lines printed before its first
//! invocation (a cold start's init) are held and go to that first invocation. The streams are
//! read concurrently with the Runtime API, so a line printed just before the response may be
//! read just after it: it still goes to that invocation, since the next one on the same
//! instance has not started.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::{FunctionSpec, InvokeError, InvokeOutcome};

/// The bounds of a [`Journal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Invocations kept per function (the oldest go first).
    pub invocations_per_function: usize,
    /// Log lines kept per invocation; later ones are counted in
    /// [`Invocation::lines_dropped`].
    pub lines_per_invocation: usize,
    /// Characters kept of one log line (the rest is cut, marked with `…`).
    pub line_chars: usize,
    /// Bytes of log text kept overall; beyond it the oldest invocations lose their lines.
    pub log_bytes: usize,
    /// Exited instances still listed per function (the most recent ones).
    pub exited_instances_per_function: usize,
}

impl Default for Limits {
    /// 50 invocations per function, 200 lines of at most 2,000 characters per invocation,
    /// 8 MiB of log text overall, 5 exited instances per function.
    fn default() -> Self {
        Limits {
            invocations_per_function: 50,
            lines_per_invocation: 200,
            line_chars: 2_000,
            log_bytes: 8 << 20,
            exited_instances_per_function: 5,
        }
    }
}

/// Identifies one instance (process) for the life of the runner; never reused.
pub type InstanceId = u64;

/// What made the runtime invoke a function, read from the event it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Trigger {
    /// An HTTP API request: the matched route's key (`GET /agents/{agentId}`).
    Route { route: String },
    /// A batch from an SQS event source: the queue's name and the batch's size.
    Queue { queue: String, messages: usize },
    /// An EventBridge schedule: the rule's name (the last part of its ARN).
    Schedule { rule: String },
    /// Anything else (a direct invoke).
    Direct,
}

/// How an invocation ended (`running` until it does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Running,
    /// The function posted a response.
    Success,
    /// The function posted an invocation error.
    Error,
    /// The function's timeout passed (`Status: timeout`).
    Timeout,
    /// The instance exited during the invocation.
    Crashed,
    /// The instance failed to initialise (`INIT_REPORT ... Status: error`).
    InitError,
    /// The invoker went away (its request was cancelled) before an outcome.
    Abandoned,
}

/// One output line of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// When the runner read it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub text: String,
}

/// One invocation, with its `REPORT` figures once it has ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    /// Position in start order over the runner's life.
    pub seq: u64,
    /// The Lambda request id (`START RequestId: ...`).
    pub request_id: String,
    /// Logical id of the function.
    pub function: String,
    pub instance: InstanceId,
    pub trigger: Trigger,
    /// Every distinct correlation id the event carried, in the order it carried them: the
    /// request's for a route, each message's for a batch ([`describe`]).
    pub correlation_ids: Vec<String>,
    /// Start (before a cold start's init), in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// The `Duration` of the REPORT line, in milliseconds; `None` while running.
    pub duration_ms: Option<f64>,
    /// The `Init Duration` of a cold start, in milliseconds.
    pub init_duration_ms: Option<f64>,
    /// `Memory Size`, in MB.
    pub memory_size_mb: u64,
    /// `Max Memory Used` (the process's peak resident memory), in MB, when it could be read.
    pub max_memory_used_mb: Option<u64>,
    pub outcome: Outcome,
    /// The error type and message, or why it crashed, timed out or failed to start.
    pub error: Option<String>,
    /// What the instance printed while it ran (see the module doc), capped; left empty
    /// where a listing asks for no lines.
    pub lines: Vec<LogLine>,
    /// Lines kept (`lines.len()` where the lines are included).
    pub line_count: usize,
    /// Lines not kept: beyond the per-invocation cap, or dropped for the overall one.
    pub lines_dropped: usize,
}

/// One instance as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    pub id: InstanceId,
    pub function: String,
    pub pid: Option<u32>,
    /// Milliseconds since it was started.
    pub age_ms: u64,
    pub alive: bool,
    /// Handling an invocation right now.
    pub busy: bool,
    /// Invocations it has started.
    pub invocations: u64,
    /// Its exit status, once it has exited.
    pub exit_status: Option<String>,
}

/// The figures of an ended invocation, as its REPORT line prints them.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    duration: Duration,
    init_duration: Option<Duration>,
    max_memory_used_mb: Option<u64>,
    outcome: Outcome,
    error: Option<String>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Journal {
    limits: Limits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_instance: InstanceId,
    next_seq: u64,
    instances: BTreeMap<InstanceId, InstanceEntry>,
    /// In start (`seq`) order.
    invocations: VecDeque<Invocation>,
    log_bytes: usize,
}

#[derive(Debug)]
struct InstanceEntry {
    function: String,
    pid: Option<u32>,
    spawned_at: Instant,
    /// The last invocation started on it: where its lines go.
    current: Option<u64>,
    busy: bool,
    invocations: u64,
    /// Lines printed before its first invocation started (its init).
    early: Vec<LogLine>,
    exited: Option<(u64, String)>,
}

impl Journal {
    /// An empty journal with `limits`.
    pub fn new(limits: Limits) -> Journal {
        Journal {
            limits,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new instance of `function` (process `pid`).
    pub(crate) fn instance_started(&self, function: &str, pid: Option<u32>) -> InstanceId {
        let mut inner = self.lock();
        inner.next_instance += 1;
        let id = inner.next_instance;
        inner.instances.insert(
            id,
            InstanceEntry {
                function: function.to_string(),
                pid,
                spawned_at: Instant::now(),
                current: None,
                busy: false,
                invocations: 0,
                early: Vec::new(),
                exited: None,
            },
        );
        id
    }

    /// Marks instance `id` exited with `status` (a description of its exit status); only the
    /// most recent exited instances of each function stay listed.
    pub(crate) fn instance_exited(&self, id: InstanceId, status: &str) {
        let mut inner = self.lock();
        let Some(entry) = inner.instances.get_mut(&id) else {
            return;
        };
        entry.busy = false;
        entry.early = Vec::new();
        entry.exited = Some((epoch_ms(SystemTime::now()), status.to_string()));
        let function = entry.function.clone();
        let mut exited: Vec<(u64, InstanceId)> = inner
            .instances
            .iter()
            .filter(|(_, e)| e.function == function)
            .filter_map(|(k, e)| e.exited.as_ref().map(|(at, _)| (*at, *k)))
            .collect();
        exited.sort_unstable();
        let excess = exited
            .len()
            .saturating_sub(self.limits.exited_instances_per_function);
        for (_, k) in &exited[..excess] {
            inner.instances.remove(k);
        }
    }

    /// Starts recording an invocation of `spec`'s function on `instance` with `payload` (the
    /// event, read for its [`Trigger`] and correlation ids). The [`Recording`] marks the
    /// invocation [`Outcome::Abandoned`] if dropped before it is finished.
    pub(crate) fn begin(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        instance: InstanceId,
        request_id: &str,
        payload: &Value,
    ) -> Recording {
        let function = spec.logical_id.as_str();
        let memory_size_mb = spec.memory_mb;
        let (trigger, correlation_ids) = describe(payload);
        let mut inner = self.lock();
        inner.next_seq += 1;
        let seq = inner.next_seq;
        let mut early = Vec::new();
        if let Some(entry) = inner.instances.get_mut(&instance) {
            entry.current = Some(seq);
            entry.busy = true;
            entry.invocations += 1;
            early = std::mem::take(&mut entry.early);
        }
        let mut invocation = Invocation {
            seq,
            request_id: request_id.to_string(),
            function: function.to_string(),
            instance,
            trigger,
            correlation_ids,
            started_at_ms: epoch_ms(SystemTime::now()),
            duration_ms: None,
            init_duration_ms: None,
            memory_size_mb,
            max_memory_used_mb: None,
            outcome: Outcome::Running,
            error: None,
            lines: Vec::new(),
            line_count: 0,
            lines_dropped: 0,
        };
        for line in early {
            inner.log_bytes += push_line(&mut invocation, line, &self.limits);
        }
        inner.invocations.push_back(invocation);
        let of_function = inner
            .invocations
            .iter()
            .filter(|i| i.function == function)
            .count();
        if of_function > self.limits.invocations_per_function
            && let Some(oldest) = inner
                .invocations
                .iter()
                .position(|i| i.function == function)
            && let Some(gone) = inner.invocations.remove(oldest)
        {
            inner.log_bytes -= log_bytes(&gone.lines);
        }
        self.enforce_log_bytes(&mut inner);
        Recording {
            journal: Arc::clone(self),
            seq,
            instance,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Records a line instance `instance` printed on `stream` (`stdout`/`stderr`).
    pub(crate) fn line(&self, instance: InstanceId, stream: &'static str, text: &str) {
        let line = LogLine {
            at_ms: epoch_ms(SystemTime::now()),
            stream,
            text: cut(text, self.limits.line_chars),
        };
        let mut inner = self.lock();
        let Some(entry) = inner.instances.get_mut(&instance) else {
            return;
        };
        let Some(seq) = entry.current else {
            if entry.early.len() < self.limits.lines_per_invocation {
                entry.early.push(line);
            }
            return;
        };
        let added = match find_mut(&mut inner.invocations, seq) {
            Some(invocation) => push_line(invocation, line, &self.limits),
            None => 0,
        };
        inner.log_bytes += added;
        if added > 0 {
            self.enforce_log_bytes(&mut inner);
        }
    }

    /// Drops the lines of the oldest invocations until the log text fits [`Limits::log_bytes`].
    fn enforce_log_bytes(&self, inner: &mut Inner) {
        let mut i = 0;
        while inner.log_bytes > self.limits.log_bytes && i < inner.invocations.len() {
            let invocation = &mut inner.invocations[i];
            let lines = std::mem::take(&mut invocation.lines);
            invocation.lines_dropped += lines.len();
            invocation.line_count = 0;
            inner.log_bytes -= log_bytes(&lines);
            i += 1;
        }
    }

    /// Every listed instance (alive, then recently exited), by function then start.
    pub fn instances(&self) -> Vec<InstanceView> {
        let inner = self.lock();
        let mut out: Vec<InstanceView> = inner
            .instances
            .iter()
            .map(|(id, e)| InstanceView {
                id: *id,
                function: e.function.clone(),
                pid: e.pid,
                age_ms: u64::try_from(e.spawned_at.elapsed().as_millis()).unwrap_or(u64::MAX),
                alive: e.exited.is_none(),
                busy: e.busy,
                invocations: e.invocations,
                exit_status: e.exited.as_ref().map(|(_, s)| s.clone()),
            })
            .collect();
        out.sort_by(|a, b| (&a.function, !a.alive, a.id).cmp(&(&b.function, !b.alive, b.id)));
        out
    }

    /// The kept invocations, oldest first; without their lines unless `with_lines`.
    pub fn invocations(&self, with_lines: bool) -> Vec<Invocation> {
        self.select(|_| true, with_lines)
    }

    /// Every kept invocation that carried `correlation_id`, in start order, with its lines.
    pub fn trace(&self, correlation_id: &str) -> Vec<Invocation> {
        self.select(
            |i| i.correlation_ids.iter().any(|c| c == correlation_id),
            true,
        )
    }

    /// The kept invocation with Lambda request id `request_id`, with its lines.
    pub fn invocation(&self, request_id: &str) -> Option<Invocation> {
        self.select(|i| i.request_id == request_id, true)
            .into_iter()
            .next()
    }

    fn select(&self, keep: impl Fn(&Invocation) -> bool, with_lines: bool) -> Vec<Invocation> {
        let inner = self.lock();
        inner
            .invocations
            .iter()
            .filter(|i| keep(i))
            .map(|i| {
                if with_lines {
                    i.clone()
                } else {
                    clone_without_lines(i)
                }
            })
            .collect()
    }

    fn finish(&self, seq: u64, instance: InstanceId, figures: Figures) {
        let mut inner = self.lock();
        if let Some(entry) = inner.instances.get_mut(&instance)
            && entry.current == Some(seq)
        {
            entry.busy = false;
        }
        if let Some(invocation) = find_mut(&mut inner.invocations, seq) {
            invocation.duration_ms = Some(ms(figures.duration));
            invocation.init_duration_ms = figures.init_duration.map(ms);
            invocation.max_memory_used_mb = figures.max_memory_used_mb;
            invocation.outcome = figures.outcome;
            invocation.error = figures.error;
        }
    }
}

/// An invocation being recorded; see [`Journal::begin`].
#[derive(Debug)]
pub(crate) struct Recording {
    journal: Arc<Journal>,
    seq: u64,
    instance: InstanceId,
    started: Instant,
    finished: bool,
}

impl Recording {
    /// Records the invocation's end: its `result`, `duration` (from START), the init duration
    /// of a cold start and the peak memory. Only the first finish counts.
    pub fn finish(
        &mut self,
        result: &Result<InvokeOutcome, InvokeError>,
        duration: Duration,
        init_duration: Option<Duration>,
        max_memory_used_mb: Option<u64>,
    ) {
        let (outcome, error) = match result {
            Ok(InvokeOutcome::Response(_)) => (Outcome::Success, None),
            Ok(InvokeOutcome::FunctionError(e)) => (
                Outcome::Error,
                Some(format!("{}: {}", e.error_type, e.error_message)),
            ),
            Err(e @ InvokeError::TimedOut { .. }) => (Outcome::Timeout, Some(e.to_string())),
            Err(e @ InvokeError::InitFailed { .. }) => (Outcome::InitError, Some(e.to_string())),
            Err(e) => (Outcome::Crashed, Some(e.to_string())),
        };
        self.record(Figures {
            duration,
            init_duration,
            max_memory_used_mb,
            outcome,
            error,
        });
    }

    /// Records a failed init (`INIT_REPORT ... Status: error`) after `init_duration`.
    pub fn finish_init_error(&mut self, init_duration: Duration, error: &InvokeError) {
        self.record(Figures {
            duration: Duration::ZERO,
            init_duration: Some(init_duration),
            max_memory_used_mb: None,
            outcome: Outcome::InitError,
            error: Some(error.to_string()),
        });
    }

    fn record(&mut self, figures: Figures) {
        if !std::mem::replace(&mut self.finished, true) {
            self.journal.finish(self.seq, self.instance, figures);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.record(Figures {
            duration: self.started.elapsed(),
            init_duration: None,
            max_memory_used_mb: None,
            outcome: Outcome::Abandoned,
            error: Some("the invoker went away before an outcome".into()),
        });
    }
}

/// The trigger and the correlation ids of an event: an API Gateway payload 2.0 request (the
/// `x-correlation-id` header when usable, else the request id, as the functions choose it), an
/// SQS batch (each body's `detail.correlationId`, or `correlationId` for a bare envelope), an
/// EventBridge scheduled event (its event `id`: a scheduled function that correlates what it
/// causes uses that, as the conversations sweeper does).
pub fn describe(payload: &Value) -> (Trigger, Vec<String>) {
    if let (Some(route), Some(context)) = (
        payload.get("routeKey").and_then(Value::as_str),
        payload.get("requestContext"),
    ) {
        let header = payload
            .pointer(&format!("/headers/{}", shared::http::CORRELATION_ID_HEADER))
            .and_then(Value::as_str)
            .filter(|v| shared::http::usable_correlation_id(v));
        let id = header.or_else(|| context.get("requestId").and_then(Value::as_str));
        let trigger = Trigger::Route {
            route: route.to_string(),
        };
        return (trigger, id.map(str::to_string).into_iter().collect());
    }
    if let Some(records) = payload.get("Records").and_then(Value::as_array)
        && records
            .first()
            .and_then(|r| r.get("eventSource"))
            .and_then(Value::as_str)
            == Some("aws:sqs")
    {
        let queue = records[0]
            .get("eventSourceARN")
            .and_then(Value::as_str)
            .map(|arn| arn.rsplit(':').next().unwrap_or(arn))
            .unwrap_or_default()
            .to_string();
        let mut ids: Vec<String> = Vec::new();
        for body in records
            .iter()
            .filter_map(|r| r.get("body").and_then(Value::as_str))
        {
            let Ok(body) = serde_json::from_str::<Value>(body) else {
                continue;
            };
            let id = body
                .pointer("/detail/correlationId")
                .or_else(|| body.get("correlationId"))
                .and_then(Value::as_str);
            if let Some(id) = id
                && !ids.iter().any(|known| known == id)
            {
                ids.push(id.to_string());
            }
        }
        let trigger = Trigger::Queue {
            queue,
            messages: records.len(),
        };
        return (trigger, ids);
    }
    if payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        let rule = payload
            .pointer("/resources/0")
            .and_then(Value::as_str)
            .map(|arn| arn.rsplit('/').next().unwrap_or(arn))
            .unwrap_or_default()
            .to_string();
        let id = payload
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string);
        return (Trigger::Schedule { rule }, id.into_iter().collect());
    }
    (Trigger::Direct, Vec::new())
}

fn find_mut(invocations: &mut VecDeque<Invocation>, seq: u64) -> Option<&mut Invocation> {
    let at = invocations.binary_search_by_key(&seq, |i| i.seq).ok()?;
    invocations.get_mut(at)
}

/// Appends `line` unless the invocation is at its cap; the bytes added.
fn push_line(invocation: &mut Invocation, line: LogLine, limits: &Limits) -> usize {
    if invocation.lines.len() >= limits.lines_per_invocation {
        invocation.lines_dropped += 1;
        return 0;
    }
    let bytes = line.text.len();
    invocation.lines.push(line);
    invocation.line_count = invocation.lines.len();
    bytes
}

fn log_bytes(lines: &[LogLine]) -> usize {
    lines.iter().map(|l| l.text.len()).sum()
}

fn clone_without_lines(i: &Invocation) -> Invocation {
    Invocation {
        seq: i.seq,
        request_id: i.request_id.clone(),
        function: i.function.clone(),
        instance: i.instance,
        trigger: i.trigger.clone(),
        correlation_ids: i.correlation_ids.clone(),
        started_at_ms: i.started_at_ms,
        duration_ms: i.duration_ms,
        init_duration_ms: i.init_duration_ms,
        memory_size_mb: i.memory_size_mb,
        max_memory_used_mb: i.max_memory_used_mb,
        outcome: i.outcome,
        error: i.error.clone(),
        lines: Vec::new(),
        line_count: i.line_count,
        lines_dropped: i.lines_dropped,
    }
}

/// `text` cut to `max` characters, marked with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::super::{Runtime, RuntimeOptions};
    use super::*;

    fn spec(id: &str, timeout_secs: u64) -> FunctionSpec {
        super::super::tests::fake_spec(id, timeout_secs, 256, BTreeMap::new())
    }

    fn http_event(correlation: Option<&str>, request_id: &str) -> Value {
        let mut headers = json!({"host": "127.0.0.1:3000"});
        if let Some(c) = correlation {
            headers["x-correlation-id"] = json!(c);
        }
        json!({
            "version": "2.0", "routeKey": "GET /echo/{id}", "rawPath": "/echo/1",
            "headers": headers,
            "requestContext": {"requestId": request_id, "http": {"method": "GET"}},
        })
    }

    fn sqs_record(body: &str) -> Value {
        json!({
            "messageId": "m", "body": body, "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:cqrs-local-Jobs",
        })
    }

    #[test]
    fn reads_the_trigger_and_correlation_ids_of_each_event_kind() {
        assert_eq!(
            describe(&http_event(Some("corr-1"), "req-1")),
            (
                Trigger::Route {
                    route: "GET /echo/{id}".into()
                },
                vec!["corr-1".to_string()]
            )
        );
        // An unusable header (a space) is ignored, as the functions ignore it.
        assert_eq!(describe(&http_event(Some("a b"), "req-1")).1, ["req-1"]);
        assert_eq!(describe(&http_event(None, "req-2")).1, ["req-2"]);

        let batch = json!({"Records": [
            sqs_record(r#"{"detail-type": "X", "detail": {"correlationId": "c1"}}"#),
            sqs_record(r#"{"id": "e", "correlationId": "c2", "type": "SubmitTrade"}"#),
            sqs_record(r#"{"detail": {"correlationId": "c1"}}"#),
            sqs_record("not json"),
        ]});
        assert_eq!(
            describe(&batch),
            (
                Trigger::Queue {
                    queue: "cqrs-local-Jobs".into(),
                    messages: 4
                },
                vec!["c1".to_string(), "c2".to_string()]
            )
        );
        let scheduled = json!({
            "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event", "source": "aws.events",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/cqrs-local-Nightly"],
            "detail": {},
        });
        assert_eq!(
            describe(&scheduled),
            (
                Trigger::Schedule {
                    rule: "cqrs-local-Nightly".into()
                },
                vec!["53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa".to_string()]
            )
        );
        assert_eq!(describe(&json!({"hello": 1})), (Trigger::Direct, vec![]));
    }

    fn finish_ok(r: &mut Recording) {
        r.finish(
            &Ok(InvokeOutcome::Response(json!(null))),
            Duration::from_millis(3),
            None,
            Some(20),
        );
    }

    #[test]
    fn keeps_the_last_invocations_of_each_function_and_caps_their_lines() {
        let journal = Arc::new(Journal::new(Limits {
            invocations_per_function: 3,
            lines_per_invocation: 2,
            line_chars: 5,
            log_bytes: 1_000,
            exited_instances_per_function: 1,
        }));
        let (a, b) = (spec("A", 3), spec("B", 3));
        let ia = journal.instance_started("A", Some(1));
        let ib = journal.instance_started("B", Some(2));
        journal.line(ia, "stdout", "init line");
        for n in 0..5 {
            let mut r = journal.begin(&a, ia, &format!("a{n}"), &json!({}));
            journal.line(ia, "stdout", "one");
            journal.line(ia, "stderr", "two");
            journal.line(ia, "stdout", "three");
            finish_ok(&mut r);
        }
        let mut r = journal.begin(&b, ib, "b0", &json!({}));
        finish_ok(&mut r);
        let kept: Vec<String> = journal
            .invocations(false)
            .iter()
            .map(|i| i.request_id.clone())
            .collect();
        assert_eq!(kept, ["a2", "a3", "a4", "b0"]);
        let a4 = journal.invocation("a4").unwrap();
        assert_eq!(
            a4.lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!((a4.line_count, a4.lines_dropped), (2, 1));
        assert_eq!(a4.lines[1].stream, "stderr");
        assert_eq!(a4.outcome, Outcome::Success);
        assert_eq!(a4.duration_ms, Some(3.0));
        assert_eq!(a4.max_memory_used_mb, Some(20));
        assert_eq!(a4.memory_size_mb, 256);
        // A listing without lines still says how many there are.
        let listed = journal.invocations(false);
        assert!(listed.iter().all(|i| i.lines.is_empty()));
        assert_eq!(listed[2].line_count, 2);

        // Lines before the first invocation (init) went to it, cut to 5 characters.
        let journal = Arc::new(Journal::new(Limits {
            line_chars: 5,
            ..Limits::default()
        }));
        let i = journal.instance_started("A", None);
        journal.line(i, "stdout", "init line");
        let mut r = journal.begin(&a, i, "first", &json!({}));
        finish_ok(&mut r);
        // A line read after the response still belongs to the invocation: no other has
        // started on the instance.
        journal.line(i, "stdout", "late");
        let first = journal.invocation("first").unwrap();
        let texts: Vec<&str> = first.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["init …", "late"]);
    }

    #[test]
    fn the_overall_log_cap_drops_the_oldest_lines_first() {
        let journal = Arc::new(Journal::new(Limits {
            log_bytes: 10,
            ..Limits::default()
        }));
        let a = spec("A", 3);
        let i = journal.instance_started("A", Some(1));
        for n in 0..3 {
            let mut r = journal.begin(&a, i, &format!("r{n}"), &json!({}));
            journal.line(i, "stdout", "1234");
            finish_ok(&mut r);
        }
        let lines: Vec<(usize, usize)> = journal
            .invocations(true)
            .iter()
            .map(|i| (i.lines.len(), i.lines_dropped))
            .collect();
        assert_eq!(lines, [(0, 1), (1, 0), (1, 0)]);
    }

    #[test]
    fn instances_are_listed_busy_idle_and_exited() {
        let journal = Arc::new(Journal::new(Limits {
            exited_instances_per_function: 1,
            ..Limits::default()
        }));
        let a = spec("A", 3);
        let one = journal.instance_started("A", Some(10));
        let two = journal.instance_started("A", Some(11));
        let three = journal.instance_started("A", Some(12));
        let mut r = journal.begin(&a, one, "r", &json!({}));
        let state = |j: &Journal| -> Vec<(InstanceId, bool, bool)> {
            j.instances()
                .iter()
                .map(|i| (i.id, i.alive, i.busy))
                .collect()
        };
        assert_eq!(
            state(&journal),
            [(one, true, true), (two, true, false), (three, true, false)]
        );
        finish_ok(&mut r);
        journal.instance_exited(two, "signal: 9 (SIGKILL)");
        journal.instance_exited(three, "exit status: 0");
        // Only the most recent exited instance stays listed.
        assert_eq!(state(&journal), [(one, true, false), (three, false, false)]);
        let listed = journal.instances();
        assert_eq!(listed[1].exit_status.as_deref(), Some("exit status: 0"));
        assert_eq!(listed[0].invocations, 1);
        // An invocation dropped before its outcome is marked abandoned.
        drop(journal.begin(&a, one, "gone", &json!({})));
        assert_eq!(
            journal.invocation("gone").unwrap().outcome,
            Outcome::Abandoned
        );
        assert!(!journal.instances()[0].busy);
    }

    /// Through the runtime and a real instance: the REPORT figures, the cold start, the
    /// correlation id, the function's own log line, a timeout.
    #[tokio::test]
    async fn the_runtime_records_its_invocations_with_their_report_figures_and_lines() {
        let runtime = Runtime::new(
            vec![spec("Fake", 1)],
            &RuntimeOptions::new("eu-west-1", "http://127.0.0.1:4566"),
        );
        let journal = Arc::clone(runtime.journal());
        runtime
            .invoke("Fake", http_event(Some("corr-rt"), "req-1"))
            .await
            .unwrap();
        runtime
            .invoke("Fake", http_event(Some("corr-rt"), "req-2"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let trace = loop {
            let trace = journal.trace("corr-rt");
            let logged = |i: &Invocation| i.lines.iter().any(|l| l.text.contains("corr-rt"));
            if trace.len() == 2 && trace.iter().all(logged) {
                break trace;
            }
            assert!(Instant::now() < deadline, "{trace:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (cold, warm) = (&trace[0], &trace[1]);
        assert!(cold.started_at_ms <= warm.started_at_ms);
        assert_eq!(cold.outcome, Outcome::Success);
        assert!(cold.init_duration_ms.is_some_and(|ms| ms > 0.0), "{cold:?}");
        assert_eq!(warm.init_duration_ms, None, "the second one is warm");
        assert!(cold.duration_ms.is_some_and(|ms| ms > 0.0));
        assert!(cold.max_memory_used_mb.is_some_and(|mb| mb > 0));
        assert_eq!(cold.instance, warm.instance);
        // The cold start's init output is its own.
        assert!(
            cold.lines.iter().any(|l| l.text == "fake function ready"),
            "{:?}",
            cold.lines
        );
        let instances = journal.instances();
        assert_eq!(instances.len(), 1);
        assert!(instances[0].alive && !instances[0].busy);
        assert_eq!(instances[0].invocations, 2);

        // Timeout 1 s: the instance is killed and listed as exited.
        let err = runtime
            .invoke("Fake", json!({"sleep": 5}))
            .await
            .unwrap_err();
        assert!(matches!(err, InvokeError::TimedOut { .. }), "{err}");
        let last = journal.invocations(false).pop().unwrap();
        assert_eq!(last.outcome, Outcome::Timeout);
        assert!(
            last.error
                .unwrap()
                .contains("Task timed out after 1.00 seconds")
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while journal.instances().iter().any(|i| i.alive) {
            assert!(Instant::now() < deadline, "{:?}", journal.instances());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
