//! The sweeper: a scheduled run (`ConversationsSweeperFunction`, every minute) that matches the
//! conversations left QUEUED although an agent may be free.
//!
//! The worker matches a QUEUED conversation when an event says a slot may be free: an agent
//! became AVAILABLE (`AgentStateChanged`) or a conversation closed (`ConversationClosed`). If
//! that event never reaches it (lost, or parked in the DLQ after its retries), the conversation
//! would wait for the next such event, however long. Each sweeper run takes the QUEUED
//! conversations that have waited longer than [`Settings::stale_after`] (the event path matches
//! within seconds, so the sweeper only picks up what it missed), oldest first, at most
//! [`Settings::max_per_run`], and re-matches each, one after the other so that the oldest is
//! served first, through the worker's own path (`App::rematch`, in `reactions`). That path
//! re-reads the conversation (one the worker matched meanwhile is skipped) and asks the agents
//! API, which reserves once per conversation: a conversation matched twice, by the worker and
//! the sweeper or by two runs, ends with exactly one agent, and no agent takes more than its
//! capacity (docs/ARCHITECTURE.md, §Commands and events).
//!
//! A failure on one conversation (the agents API unavailable, a store error) is counted and the
//! run goes on with the next; that conversation stays QUEUED for the next run. A match is
//! started only while the longest call the agents client can make still fits before the
//! invocation's deadline, so a run ends well inside the function's timeout even with the agents
//! API down; what it left is counted as deferred. Every run logs its counts (and emits them as
//! metrics) and answers with them ([`Report`]).

use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use chrono::{TimeDelta, Utc};
use serde::Serialize;
use serde_json::Value;
use shared::config::Vars;
use shared::metrics::Unit;
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    store::conversations::{ConversationStore, DynamoConversationStore},
};

use crate::App;
use crate::reactions::Rematch;

/// Kept free after the last match call for its write and the release events' publication.
const MARGIN: Duration = Duration::from_millis(500);

/// What a run takes on; [`Settings::from_vars`] reads the template's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A conversation QUEUED (created) at least this long ago is swept; a younger one is left
    /// to the event path (`SWEEP_STALE_AFTER_SECS`, default 30 s).
    pub stale_after: Duration,
    /// Conversations re-matched per run at most (`SWEEP_MAX_PER_RUN`, default 25).
    pub max_per_run: usize,
}

impl Settings {
    pub fn from_vars(vars: &Vars) -> Settings {
        Settings {
            stale_after: Duration::from_secs(vars.var_or("SWEEP_STALE_AFTER_SECS", 30)),
            max_per_run: vars.var_or("SWEEP_MAX_PER_RUN", 25),
        }
    }
}

/// The function: the worker's store, bus and agents client, and the run's settings.
pub struct Sweeper<S, B> {
    pub app: App<S, B>,
    pub settings: Settings,
}

pub type AwsSweeper = Sweeper<DynamoConversationStore, EventBridgeBus>;

/// Builds the sweeper from the template's environment: what the worker needs
/// ([`crate::init`]) and [`Settings::from_vars`].
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsSweeper, Error> {
    Ok(Sweeper {
        app: crate::init(sdk, vars)?,
        settings: Settings::from_vars(vars),
    })
}

/// What one run did. Every stale conversation it took counts in exactly one of `matched`,
/// `no_agent`, `skipped`, `failed` and `deferred`; a run that cannot list them at all reports
/// `failed: 1` and nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Stale QUEUED conversations the run took (at most `max_per_run`).
    pub stale: usize,
    /// Matched and ASSIGNED by this run.
    pub matched: usize,
    /// The agents API had nobody for them (`409`): still QUEUED.
    pub no_agent: usize,
    /// No longer QUEUED when re-read (matched or closed meanwhile): left alone.
    pub skipped: usize,
    /// Their match failed (logged): still QUEUED, for the next run.
    pub failed: usize,
    /// Not tried, for want of time before the deadline: still QUEUED, for the next run.
    pub deferred: usize,
    /// More stale conversations wait than one run takes.
    pub backlog: bool,
}

/// One run, to be done by `deadline`. `event` is the Scheduled Event (its `id` is the run's
/// correlation id, carried to the agents API and into the events a match causes, so a trace of
/// that id starts at the run);
/// anything else (a schedule's `Input`, `{}`) runs the same under a fresh id. Never fails: see
/// [`Report`].
pub async fn handle<S: ConversationStore, B: EventBus>(
    sweeper: &Sweeper<S, B>,
    event: Value,
    deadline: Instant,
) -> Report {
    let started = Instant::now();
    let (app, settings) = (&sweeper.app, &sweeper.settings);
    let correlation_id = event["id"]
        .as_str()
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let mut report = Report::default();
    let stale = match stale_conversations(app, settings).await {
        Ok(stale) => stale,
        Err(e) => {
            tracing::error!(%correlation_id, error = %e, "sweep: cannot list queued conversations");
            report.failed = 1;
            return report;
        }
    };
    report.backlog = stale.len() > settings.max_per_run;
    report.stale = stale.len().min(settings.max_per_run);
    let mut releases = Vec::new();
    for (i, conversation) in stale.iter().take(settings.max_per_run).enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < app.agents.max_call_time() + MARGIN {
            report.deferred = report.stale - i;
            break;
        }
        match app.rematch(&correlation_id, conversation).await {
            Ok(Rematch::Matched { release }) => {
                tracing::info!(%correlation_id, conversation_id = %conversation, "sweep: matched");
                report.matched += 1;
                releases.extend(release);
            }
            Ok(Rematch::NoAgent) => report.no_agent += 1,
            Ok(Rematch::NotQueued) => report.skipped += 1,
            Err(e) => {
                tracing::warn!(%correlation_id, conversation_id = %conversation, error = %e, "sweep: match failed; left QUEUED for the next run");
                report.failed += 1;
            }
        }
    }
    // A release lost here is not a leaked slot: the agents API's own `AgentMatched` for the
    // same match reaches the worker, which releases it too.
    if !releases.is_empty()
        && let Err(e) = app.bus.publish(&releases).await
    {
        tracing::error!(%correlation_id, error = %e, "sweep: publishing releases failed");
    }
    tracing::info!(
        %correlation_id,
        stale = report.stale,
        matched = report.matched,
        no_agent = report.no_agent,
        skipped = report.skipped,
        failed = report.failed,
        deferred = report.deferred,
        backlog = report.backlog,
        "sweep done"
    );
    shared::metrics::emit(&[
        ("SweepStale", report.stale as f64, Unit::Count),
        ("SweepMatched", report.matched as f64, Unit::Count),
        ("SweepFailed", report.failed as f64, Unit::Count),
        (
            "SweepDuration",
            started.elapsed().as_secs_f64() * 1e3,
            Unit::Milliseconds,
        ),
    ]);
    report
}

/// The QUEUED conversations created at least `stale_after` ago, oldest first: up to
/// `max_per_run + 1` of them (one more than a run takes tells a backlog).
async fn stale_conversations<S: ConversationStore, B>(
    app: &App<S, B>,
    settings: &Settings,
) -> Result<Vec<shared::domain::ids::ConversationId>, Error> {
    let stale_after = TimeDelta::from_std(settings.stale_after).unwrap_or(TimeDelta::MAX);
    let cutoff = Utc::now()
        .checked_sub_signed(stale_after)
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
    let queued = app.store.queued(None, settings.max_per_run + 1).await?;
    Ok(queued
        .into_iter()
        .take_while(|c| c.created_at <= cutoff)
        .map(|c| c.conversation_id)
        .collect())
}
