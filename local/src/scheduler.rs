//! Scheduled event sources: each enabled `Schedule` (an EventBridge rule) or `ScheduleV2` (an
//! EventBridge Scheduler schedule) event of the template invokes its function when its
//! expression says, with the payload AWS would send.
//!
//! Layout: [`Expression`] parses `rate(...)` and AWS's 6-field `cron(...)` and computes fire
//! times (a pure function of instants, unit-tested); [`Schedules::from_template`] resolves the
//! template's schedules against the provisioned stack (names, ARNs, `Input`) and reads
//! [`SPEEDUP_ENV`]; [`Schedules::start`] runs one timer task per enabled schedule, stopped by
//! the runner's shutdown signal like the pollers.
//!
//! Time is read on a local clock that starts at the real time when the runner starts and runs
//! [`SPEEDUP_ENV`] times faster than real time (so a daily job can be seen to run): fire times,
//! and the `time` an event carries, are instants of that clock. A rate schedule first fires one
//! period after the start (EventBridge counts from the rule's creation), a cron schedule at its
//! next matching minute. Invocations are asynchronous, as EventBridge's are: a slow run never
//! delays the next firing (runs may overlap, up to the runtime's instance limit), and a firing
//! the runner could not keep up with is skipped, not made up later. On shutdown the timers stop
//! and the invocations in flight finish.
//!
//! Not emulated: a `ScheduleExpressionTimezone` other than UTC (the schedule runs in UTC, with
//! a warning: zone rules would need a time-zone database dependency), `FlexibleTimeWindow` (the
//! schedule fires at the exact time), and Lambda's retries of a failed asynchronous invocation
//! (the failure is logged).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use croner::parser::{CronParser, Seconds, Year};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::provision::Stack;
use crate::runtime::{InvokeError, InvokeOutcome, Runtime};
use crate::template::{ScheduleKind, Template};

/// Environment variable: schedules fire this many times faster than real time (a whole number,
/// at least 1; default 1). At 60 `rate(1 minute)` fires every second; at 1440 a daily cron
/// fires every minute.
pub const SPEEDUP_ENV: &str = "LOCAL_SCHEDULE_SPEEDUP";

/// Longest single timer sleep: a far-off fire time is waited for in steps.
const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);

/// A parsed schedule expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expression {
    /// `rate(N minute|minutes|hour|hours|day|days)`: every period, counted from the start.
    Rate(TimeDelta),
    /// `cron(minutes hours day-of-month month day-of-week year)`, in UTC.
    Cron(Box<croner::Cron>),
}

impl Expression {
    /// Parses an expression as EventBridge writes it. AWS's rules apply: a rate's value is a
    /// positive integer with a singular unit for 1 and a plural one otherwise; a cron has six
    /// fields, day-of-week counts 1–7 from Sunday (or `SUN`–`SAT`), exactly one of
    /// day-of-month and day-of-week is `?`, and `L`, `W`, `#`, lists, ranges and steps are
    /// allowed where AWS allows them. The error says what is wrong, in one line.
    pub fn parse(text: &str) -> Result<Expression, String> {
        let text = text.trim();
        let inner = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|t| t.strip_prefix('('))
                .and_then(|t| t.strip_suffix(')'))
        };
        if let Some(body) = inner("rate") {
            rate(body).map_err(|e| format!("{text}: {e}"))
        } else if let Some(body) = inner("cron") {
            cron(body).map_err(|e| format!("{text}: {e}"))
        } else {
            Err(format!(
                "{text:?} is not a schedule expression: expected rate(value unit) or cron(fields)"
            ))
        }
    }

    /// The first fire time strictly after `after`, for a schedule whose clock started at
    /// `origin` (rates count from there). `None` when there is none (a cron whose year range
    /// has passed).
    pub fn next_after(&self, origin: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Expression::Rate(period) => {
                if after < origin {
                    return origin.checked_add_signed(*period);
                }
                let elapsed = (after - origin).num_milliseconds();
                let periods = elapsed / period.num_milliseconds() + 1;
                origin.checked_add_signed(period.checked_mul(i32::try_from(periods).ok()?)?)
            }
            Expression::Cron(cron) => cron.find_next_occurrence(&after, false).ok(),
        }
    }
}

fn rate(body: &str) -> Result<Expression, String> {
    let parts: Vec<&str> = body.split_whitespace().collect();
    let [value, unit] = parts[..] else {
        return Err("a rate is rate(value unit), e.g. rate(5 minutes)".into());
    };
    let n: i64 = value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("the value {value:?} is not a positive integer"))?;
    let (seconds, singular) = match unit {
        "minute" => (60, true),
        "minutes" => (60, false),
        "hour" => (3600, true),
        "hours" => (3600, false),
        "day" => (86_400, true),
        "days" => (86_400, false),
        other => {
            return Err(format!(
                "the unit {other:?} is none of minute, minutes, hour, hours, day, days"
            ));
        }
    };
    if singular != (n == 1) {
        return Err(format!(
            "the unit must be {} for the value {n}",
            if n == 1 { "singular" } else { "plural" }
        ));
    }
    TimeDelta::try_seconds(n.saturating_mul(seconds))
        .map(Expression::Rate)
        .ok_or_else(|| format!("the period {n} {unit} is too long"))
}

/// AWS's fields mapped onto croner's Quartz-style pattern: a seconds field of `0` in front,
/// the year required, weekdays 1–7 from Sunday, `0/15` steps allowed; `?` (which croner reads
/// as `*`) where AWS requires it; a bare `L` in day-of-week is that week's last day, Saturday.
fn cron(body: &str) -> Result<Expression, String> {
    let fields: Vec<&str> = body.split_whitespace().collect();
    let [minutes, hours, dom, month, dow, year] = fields[..] else {
        return Err(format!(
            "a cron has 6 fields (minutes hours day-of-month month day-of-week year), not {}",
            fields.len()
        ));
    };
    if (dom == "?") == (dow == "?") {
        return Err(
            "exactly one of day-of-month and day-of-week must be ?, the other a value or *".into(),
        );
    }
    let dow = if dow.eq_ignore_ascii_case("L") {
        "7"
    } else {
        dow
    };
    let parser = CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Required)
        .alternative_weekdays(true)
        .sloppy_ranges(true)
        .build();
    let cron = parser
        .parse(&format!("0 {minutes} {hours} {dom} {month} {dow} {year}"))
        .map_err(|e| e.to_string())?;
    Ok(Expression::Cron(Box::new(cron)))
}

/// One schedule of the template, resolved against the stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Logical id of the function it invokes.
    pub function: String,
    /// Name of the event in the function's `Events` map.
    pub event: String,
    pub kind: ScheduleKind,
    /// The expression as written, e.g. `rate(5 minutes)` (log lines and the table).
    pub expression_text: String,
    pub expression: Expression,
    /// The rule's or schedule's name: `Name`, else `{stack}-{Function}{Event}` for a rule (at
    /// most 64 characters) and `{Function}{Event}` for a schedule.
    pub name: String,
    /// Its ARN: the rule's (`…:rule/{name}`, the Scheduled Event's `resources`) or the
    /// schedule's (`…:schedule/default/{name}`, `<aws.scheduler.schedule-arn>`).
    pub arn: String,
    /// `Input`, resolved: JSON text sent instead of the default payload.
    pub input: Option<String>,
    /// False for `Enabled: false` or `State: DISABLED`: listed, never fired.
    pub enabled: bool,
    /// What is not emulated for this schedule (an ignored time zone), for the table.
    pub warning: Option<String>,
    pub region: String,
    pub account_id: String,
}

impl Schedule {
    /// The payload of a firing at `at` (an instant of the schedule clock). A rule sends its
    /// `Input` as is, else EventBridge's Scheduled Event (`version`, `id`, `detail-type:
    /// "Scheduled Event"`, `source: "aws.events"`, `account`, `time` to the second, `region`,
    /// `resources: [rule ARN]`, `detail: {}`). A schedule sends its `Input` with the context
    /// attributes `<aws.scheduler.schedule-arn>`, `<aws.scheduler.scheduled-time>`,
    /// `<aws.scheduler.execution-id>` and `<aws.scheduler.attempt-number>` replaced, else `{}`.
    /// `Err` only when the replaced `Input` is not JSON.
    pub fn payload(&self, at: DateTime<Utc>) -> Result<Value, String> {
        let time = at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let text = match (&self.kind, &self.input) {
            (ScheduleKind::Rule, None) => {
                return Ok(json!({
                    "version": "0",
                    "id": uuid::Uuid::new_v4().to_string(),
                    "detail-type": "Scheduled Event",
                    "source": "aws.events",
                    "account": self.account_id,
                    "time": time,
                    "region": self.region,
                    "resources": [self.arn],
                    "detail": {},
                }));
            }
            (ScheduleKind::Scheduler, None) => return Ok(json!({})),
            (ScheduleKind::Rule, Some(input)) => input.clone(),
            (ScheduleKind::Scheduler, Some(input)) => input
                .replace("<aws.scheduler.schedule-arn>", &self.arn)
                .replace("<aws.scheduler.scheduled-time>", &time)
                .replace(
                    "<aws.scheduler.execution-id>",
                    &uuid::Uuid::new_v4().simple().to_string()[..16],
                )
                .replace("<aws.scheduler.attempt-number>", "1"),
        };
        serde_json::from_str(&text).map_err(|e| format!("Input is not JSON: {e}"))
    }
}

/// Every schedule of the template and the clock's speed.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedules {
    /// In template order (function, then event name); disabled ones included.
    pub schedules: Vec<Schedule>,
    /// [`SPEEDUP_ENV`]: how many times faster than real time the schedule clock runs.
    pub speedup: u32,
}

impl Schedules {
    /// Resolves the template's `Schedule` and `ScheduleV2` events against `stack` and reads
    /// [`SPEEDUP_ENV`]. Errors (one line, naming function and event): an expression or `Input`
    /// that does not resolve, an expression that does not parse, an `Input` that is not JSON,
    /// a speed-up that is not a whole number ≥ 1.
    pub fn from_template(template: &Template, stack: &Stack) -> Result<Schedules, String> {
        let speedup = speedup_from_env()?;
        let mut schedules = Vec::new();
        for f in template.functions.values() {
            for src in &f.schedules {
                let bad =
                    |why: String| format!("{}: schedule event {}: {why}", f.logical_id, src.event);
                let resolve = |v: &Value| stack.resolve_string(v).map_err(|e| bad(e.describe()));
                let expression_text = resolve(&src.expression)?;
                let expression = Expression::parse(&expression_text).map_err(bad)?;
                let input = src.input.as_ref().map(resolve).transpose()?;
                if let Some(text) = &input {
                    serde_json::from_str::<Value>(text)
                        .map_err(|e| bad(format!("Input is not JSON: {e}")))?;
                }
                let name = match &src.name {
                    Some(n) => resolve(n)?,
                    None => default_name(src.kind, &stack.name, &f.logical_id, &src.event),
                };
                let (region, account) = (&stack.region, &stack.account_id);
                let arn = match src.kind {
                    ScheduleKind::Rule => format!("arn:aws:events:{region}:{account}:rule/{name}"),
                    ScheduleKind::Scheduler => {
                        format!("arn:aws:scheduler:{region}:{account}:schedule/default/{name}")
                    }
                };
                let warning = src
                    .timezone
                    .as_deref()
                    .filter(|tz| !matches!(*tz, "UTC" | "Etc/UTC" | "GMT" | "Etc/GMT"))
                    .map(|tz| format!("time zone {tz} not applied locally: runs in UTC"));
                schedules.push(Schedule {
                    function: f.logical_id.clone(),
                    event: src.event.clone(),
                    kind: src.kind,
                    expression_text,
                    expression,
                    name,
                    arn,
                    input,
                    enabled: src.enabled,
                    warning,
                    region: region.clone(),
                    account_id: account.clone(),
                });
            }
        }
        Ok(Schedules { schedules, speedup })
    }

    /// The table's lines: a heading, then one line per schedule (event, expression, function,
    /// kind and name, and `disabled` or what is not emulated); none without schedules.
    pub fn describe(&self) -> Vec<String> {
        if self.schedules.is_empty() {
            return Vec::new();
        }
        let mut lines = vec![match self.speedup {
            1 => "Schedules".to_string(),
            n => format!("Schedules ({SPEEDUP_ENV}={n}: {n}x faster than real time)"),
        }];
        for s in &self.schedules {
            let kind = match s.kind {
                ScheduleKind::Rule => "EventBridge rule",
                ScheduleKind::Scheduler => "EventBridge Scheduler",
            };
            let mut line = format!(
                "  {:<12} {:<28} -> {:<28} {kind} {}",
                s.event, s.expression_text, s.function, s.name
            );
            if !s.enabled {
                line.push_str(", disabled");
            }
            if let Some(w) = &s.warning {
                line.push_str(&format!(", {w}"));
            }
            lines.push(line);
        }
        lines
    }

    /// Starts a timer task per enabled schedule; setting `shutdown` to `true` stops them (the
    /// invocations in flight finish first: [`Running::wait`]).
    pub fn start(self, runtime: &Arc<Runtime>, shutdown: watch::Receiver<bool>) -> Running {
        let clock = Clock {
            start: tokio::time::Instant::now(),
            origin: Utc::now(),
            speedup: self.speedup,
        };
        let (done_tx, done) = mpsc::channel(1);
        for schedule in self.schedules.into_iter().filter(|s| s.enabled) {
            if let Some(w) = &schedule.warning {
                eprintln!("[schedule] {} {}: {w}", schedule.function, schedule.event);
            }
            tokio::spawn(run(
                Arc::new(schedule),
                clock,
                Arc::clone(runtime),
                shutdown.clone(),
                done_tx.clone(),
            ));
        }
        Running { done }
    }
}

/// The running timers.
pub struct Running {
    done: mpsc::Receiver<()>,
}

impl Running {
    /// Waits until every timer has stopped and its invocations have finished (after shutdown
    /// was signalled).
    pub async fn wait(mut self) {
        while self.done.recv().await.is_some() {}
    }
}

/// [`SPEEDUP_ENV`], 1 when unset or empty.
pub fn speedup_from_env() -> Result<u32, String> {
    match std::env::var(SPEEDUP_ENV) {
        Err(_) => Ok(1),
        Ok(v) if v.trim().is_empty() => Ok(1),
        Ok(v) => v.trim().parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            format!("{SPEEDUP_ENV} must be a whole number of at least 1, not {v:?}")
        }),
    }
}

/// The name CloudFormation would give: SAM names a rule's resource `{Function}{Event}` and
/// CloudFormation prefixes the stack name (rule names are at most 64 characters); a SAM
/// schedule is named after its resource.
fn default_name(kind: ScheduleKind, stack: &str, function: &str, event: &str) -> String {
    match kind {
        ScheduleKind::Rule => format!("{stack}-{function}{event}")
            .chars()
            .take(64)
            .collect(),
        ScheduleKind::Scheduler => format!("{function}{event}"),
    }
}

/// The schedule clock: `origin` at the real instant `start`, running `speedup` times faster.
#[derive(Debug, Clone, Copy)]
struct Clock {
    start: tokio::time::Instant,
    origin: DateTime<Utc>,
    speedup: u32,
}

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        self.at(tokio::time::Instant::now())
    }

    /// The clock's time at the real instant `real`.
    fn at(&self, real: tokio::time::Instant) -> DateTime<Utc> {
        let elapsed = real
            .saturating_duration_since(self.start)
            .checked_mul(self.speedup)
            .and_then(|d| TimeDelta::from_std(d).ok())
            .unwrap_or(TimeDelta::MAX);
        self.origin
            .checked_add_signed(elapsed)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Real time it takes this clock to go from `from` to `to` (zero when `to` is not later).
    fn real_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        (to - from).to_std().unwrap_or_default() / self.speedup
    }
}

/// One schedule's timer: waits for each fire time, logs the firing and invokes the function
/// without waiting for it.
async fn run(
    schedule: Arc<Schedule>,
    clock: Clock,
    runtime: Arc<Runtime>,
    mut shutdown: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
) {
    let s = &schedule;
    let mut in_flight = JoinSet::new();
    let mut after = clock.origin;
    'timer: while let Some(next) = s.expression.next_after(clock.origin, after) {
        loop {
            let wait = clock.real_between(clock.now(), next);
            if wait.is_zero() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
                _ = shutdown.wait_for(|stop| *stop) => break 'timer,
            }
        }
        while in_flight.try_join_next().is_some() {}
        println!("[schedule] {} {} fired", s.function, s.expression_text);
        match s.payload(next) {
            Ok(payload) => {
                in_flight.spawn(invoke(Arc::clone(&runtime), Arc::clone(&schedule), payload));
            }
            Err(e) => eprintln!("[schedule] {} {}: {e}", s.function, s.event),
        }
        after = next.max(clock.now());
    }
    while in_flight.join_next().await.is_some() {}
}

async fn invoke(runtime: Arc<Runtime>, s: Arc<Schedule>, payload: Value) {
    match runtime.invoke(&s.function, payload).await {
        Ok(InvokeOutcome::Response(_)) | Err(InvokeError::ShuttingDown) => {}
        Ok(InvokeOutcome::FunctionError(e)) => eprintln!(
            "[schedule] {} {}: {}: {} (not retried locally)",
            s.function, s.event, e.error_type, e.error_message
        ),
        Err(e) => eprintln!("[schedule] {} {}: {e}", s.function, s.event),
    }
}

#[cfg(test)]
mod tests;
