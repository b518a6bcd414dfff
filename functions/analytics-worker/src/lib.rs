//! The analytics worker: keeps the counters of `GET /analytics/*` from conversation, agent and
//! trade events, each event counted **exactly once**: its increments and its inbox entry
//! (keyed by the event id) are one DynamoDB transaction, so a redelivered event (the same id,
//! in another batch or twice in one) fails on its record and adds nothing.
//!
//! What each event counts:
//! - `ConversationStarted`: conversations created (once per conversation);
//! - `AgentMatched`: conversations assigned, and the agent's conversations handled (once per
//!   conversation: the agents service reserves one agent per conversation);
//! - `ConversationClosed`: conversations closed (once per conversation, although a
//!   conversation closed before its match arrived is announced closed twice);
//! - `MessageSent`: messages; with sender `agent`, the agent's messages sent (the event names
//!   the conversation's agent);
//! - `TradeExecuted`: trades executed and the symbol's volume (quantity and `quantity × price`,
//!   exact); `TradeRejected`: trades rejected;
//! - `AgentRegistered`: makes the agent known (all its counters at zero).
//!
//! Time to assign of a conversation = `AgentMatched.matchedAt − ConversationStarted.createdAt`
//! (acceptance of `POST /conversations` to the agent's reservation), in whole milliseconds,
//! clamped at 0 (the two times come from different functions' clocks). The two events arrive
//! in either order; whichever comes second adds the conversation's time to its agent's total.

use aws_config::SdkConfig;
use rust_decimal::Decimal;
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    bus::EventBus,
    domain::{agents::AgentMatched, conversations::Sender, money::exact_mul},
    envelope::{Envelope, Payload},
    store::{
        Write,
        analytics::{
            AnalyticsStore, DynamoAnalyticsStore, Fact, Increment, Target, Timeline, TimelineUpdate,
        },
        inbox::InboxEntry,
        read_decide_write,
    },
    worker::{Applied, Worker, exactly_once},
};

/// The analytics worker: its store.
pub struct App<S>(pub S);

/// The app as deployed: its DynamoDB store.
pub type AwsApp = App<DynamoAnalyticsStore>;

/// Builds the function from the template's environment: `TABLE_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    shared::store::open(sdk, vars).map(App)
}

/// Analytics is a sink: applying an event never publishes one, so [`exactly_once`] is given a
/// bus that refuses to publish (reaching it would be a bug, reported as such).
struct Sink;

impl EventBus for Sink {
    async fn publish(&self, events: &[Envelope]) -> Result<(), Error> {
        Err(Error::Internal(format!(
            "the analytics worker publishes no events ({} given)",
            events.len()
        )))
    }
}

/// Events of one conversation are applied in batch order (they share its timeline); all the
/// rest concurrently.
impl<S: AnalyticsStore> Worker for App<S> {
    const NAME: &'static str = "the analytics worker";
    const HANDLES: &'static [&'static str] = &[
        "ConversationStarted",
        "AgentMatched",
        "ConversationClosed",
        "MessageSent",
        "AgentRegistered",
        "TradeExecuted",
        "TradeRejected",
    ];

    fn order_key(env: &Envelope) -> String {
        match &env.payload {
            // Their aggregate is the conversation.
            Payload::ConversationStarted(_)
            | Payload::AgentMatched(_)
            | Payload::ConversationClosed(_)
            | Payload::MessageSent(_) => env.payload.aggregate_id().to_owned(),
            _ => env.id.to_string(),
        }
    }

    async fn apply(&self, env: Envelope) -> Result<(), Error> {
        exactly_once(&self.0, &Sink, &env, || count(&self.0, &env)).await
    }
}

fn one(name: &'static str) -> (&'static str, Decimal) {
    (name, Decimal::ONE)
}

fn summary(name: &'static str) -> Increment {
    Increment {
        target: Target::Summary,
        deltas: vec![one(name)],
    }
}

async fn count<S: AnalyticsStore>(app: &S, env: &Envelope) -> Result<Applied, Error> {
    let increments = match &env.payload {
        Payload::ConversationStarted(e) => {
            return timed(app, env, &e.conversation_id, |seen| {
                let fact = Fact::Created(e.created_at);
                if seen.created_at.is_some() {
                    return None;
                }
                let mut incs = vec![summary("conversationsCreated")];
                if let Some((agent, matched_at)) = &seen.matched {
                    incs.push(assign_time(agent, e.created_at, *matched_at, Vec::new()));
                }
                Some((fact, incs))
            })
            .await;
        }
        Payload::AgentMatched(m) => return matched(app, env, m).await,
        Payload::ConversationClosed(e) => {
            return timed(app, env, &e.conversation_id, |seen| {
                (!seen.closed).then(|| {
                    (
                        Fact::Closed(e.closed_at),
                        vec![summary("conversationsClosed")],
                    )
                })
            })
            .await;
        }
        Payload::MessageSent(e) => {
            let mut incs = vec![summary("messages")];
            if let (Sender::Agent, Some(agent)) = (e.sender, &e.agent_id) {
                incs.push(Increment {
                    target: Target::Agent(agent.clone()),
                    deltas: vec![one("messagesSent")],
                });
            }
            incs
        }
        Payload::TradeExecuted(t) => {
            let notional = exact_mul(t.order.quantity.get(), t.order.price.get())
                .map_err(|e| Error::invalid("price", e.to_string()))?;
            vec![
                summary("tradesExecuted"),
                Increment {
                    target: Target::Volume(t.order.symbol.clone()),
                    deltas: vec![("quantity", t.order.quantity.get()), ("notional", notional)],
                },
            ]
        }
        Payload::TradeRejected(_) => vec![summary("tradesRejected")],
        Payload::AgentRegistered(e) => vec![Increment {
            target: Target::Agent(e.agent_id.clone()),
            deltas: vec![("conversationsHandled", Decimal::ZERO)],
        }],
        other => return Err(App::<S>::refuse(other)),
    };
    let record = InboxEntry::new(env.id, Vec::new());
    match app.apply(&record, None, &increments).await? {
        Write::Done => Ok(Applied::Done(Vec::new())),
        // Without a timeline update there is no other condition than the inbox entry's.
        Write::Duplicate | Write::Conflict => Ok(Applied::Duplicate),
    }
}

async fn matched<S: AnalyticsStore>(
    app: &S,
    env: &Envelope,
    m: &AgentMatched,
) -> Result<Applied, Error> {
    timed(app, env, &m.conversation_id, |seen| {
        if seen.matched.is_some() {
            return None;
        }
        let deltas = vec![one("conversationsHandled")];
        let agent = match seen.created_at {
            Some(created_at) => assign_time(&m.agent_id, created_at, m.matched_at, deltas),
            None => Increment {
                target: Target::Agent(m.agent_id.clone()),
                deltas,
            },
        };
        Some((
            Fact::Matched(m.agent_id.clone(), m.matched_at),
            vec![summary("conversationsAssigned"), agent],
        ))
    })
    .await
}

/// The agent's increment `deltas` plus one timed assignment of `matched_at − created_at`.
fn assign_time(
    agent: &shared::domain::ids::AgentId,
    created_at: chrono::DateTime<chrono::Utc>,
    matched_at: chrono::DateTime<chrono::Utc>,
    mut deltas: Vec<(&'static str, Decimal)>,
) -> Increment {
    let millis = (matched_at - created_at).num_milliseconds().max(0);
    deltas.push(one("assignmentsTimed"));
    deltas.push(("assignMillisTotal", Decimal::from(millis)));
    Increment {
        target: Target::Agent(agent.clone()),
        deltas,
    }
}

/// Applies an event that records a fact in its conversation's timeline. `decide` maps the
/// timeline as read to the fact and increments, or `None` when the fact is known already (the
/// event is then only recorded in the inbox). A concurrent change of the timeline makes the
/// write fail its condition: read again and decide again.
async fn timed<S, D>(
    app: &S,
    env: &Envelope,
    conversation: &shared::domain::ids::ConversationId,
    decide: D,
) -> Result<Applied, Error>
where
    S: AnalyticsStore,
    D: Fn(&Timeline) -> Option<(Fact, Vec<Increment>)>,
{
    let record = InboxEntry::new(env.id, Vec::new());
    let what = format!("the timeline of conversation {conversation}");
    read_decide_write(&what, async || {
        let seen = app.timeline(conversation).await?;
        let write = match decide(&seen) {
            Some((fact, increments)) => {
                let update = TimelineUpdate {
                    conversation: conversation.clone(),
                    seen,
                    fact,
                };
                app.apply(&record, Some(&update), &increments).await?
            }
            None => app.apply(&record, None, &[]).await?,
        };
        Ok(write.applied(Vec::new()))
    })
    .await
}
