//! The checks of a soak: pure functions of the calls (every request and its final answer),
//! the samples taken while the traffic ran, and what the system shows once its queues are quiet
//! ([`Observed`]). Each returns a [`Check`]: how many things held, and every violation with the
//! ids to look up. Nothing here does I/O, so the unit tests below feed it inconsistent inputs
//! and see it fail.
//!
//! What needs every event applied (positions, ledger, analytics) is only a violation once the
//! dead-letter queues are empty: while they hold messages, a mismatch is a note ("not settled").

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::read::{Dead, Observed};
use super::traffic::{Call, Op, Sample, Seen};

/// One guarantee, checked.
#[derive(Debug, Clone, Default)]
pub struct Check {
    pub name: &'static str,
    /// How many things held (`what` says which).
    pub ok: usize,
    pub what: String,
    pub violations: Vec<String>,
    /// What is worth knowing but breaks no guarantee (a command in a DLQ, an ambiguity).
    pub notes: Vec<String>,
}

impl Check {
    fn new(name: &'static str, what: &str) -> Check {
        Check {
            name,
            what: what.to_owned(),
            ..Check::default()
        }
    }

    /// A violation, or a note when `settled` is false (the DLQs still hold messages).
    fn unless_unsettled(&mut self, settled: bool, text: String) {
        if settled {
            self.violations.push(text);
        } else {
            self.notes
                .push(format!("not settled (DLQs hold messages): {text}"));
        }
    }

    /// A note `<what> in DLQ <queue>` when `dead` holds it, else the `violation`.
    fn in_dlq_or(&mut self, dead: Option<&Dead>, what: &str, violation: impl FnOnce() -> String) {
        match dead {
            Some(d) => self.notes.push(format!("{what} in DLQ {}", d.queue)),
            None => self.violations.push(violation()),
        }
    }

    /// An accepted `what` (its `202` had correlation id `correlation`) that was never applied:
    /// a note when `dead` holds it, else a violation.
    fn unapplied(&mut self, dead: Option<&Dead>, what: &str, correlation: &str) {
        self.in_dlq_or(dead, what, || {
            format!("{what} accepted ({correlation}), never applied, in no DLQ")
        });
    }

    /// Objects applied that no `202` names (`missing` of them, e.g. versions or sequence
    /// numbers), where `on` picks the object's calls: a note when the requests whose outcome is
    /// unknown (failed, or accepted after a `5xx`) can account for them, else a violation.
    /// `text` describes it from the count of failed requests and the correlation ids of those
    /// accepted after a `5xx`.
    fn unexplained(
        &mut self,
        calls: &[Call],
        on: impl Fn(&&Call) -> bool,
        missing: usize,
        text: impl FnOnce(usize, Vec<&String>) -> String,
    ) {
        let unknown = calls.iter().filter(&on).filter(|c| !c.is(202)).count();
        let after_5xx = calls
            .iter()
            .filter(&on)
            .filter(|c| c.is(202))
            .map(|c| &c.correlation)
            .collect();
        let text = text(unknown, after_5xx);
        if missing <= unknown {
            self.notes.push(text);
        } else {
            self.violations.push(text);
        }
    }

    /// Each pair of one object's `items` (the number each was applied or executed as, and its
    /// call) where one was accepted before the other was sent but numbered after it: a note when
    /// either was redriven from a DLQ (its id, the answer's `id_key`, in `redriven`; SQS's
    /// FIFO-with-DLQ design), else a violation. `text`: the two calls and their numbers, the
    /// earlier accepted first.
    fn out_of_order(
        &mut self,
        items: &Timed<(u64, &Call)>,
        id_key: &str,
        redriven: &BTreeSet<String>,
        text: impl Fn(&Call, u64, &Call, u64) -> String,
    ) {
        for (i, j) in regressions(items, |a, b| a.0 < b.0) {
            let ((na, a), (nb, b)) = (items[i].2, items[j].2);
            let text = text(a, na, b, nb);
            let ids = [a.got(id_key), b.got(id_key)];
            if ids.iter().flatten().any(|id| redriven.contains(*id)) {
                self.notes
                    .push(format!("{text} (one was redriven from a DLQ)"));
            } else {
                self.violations.push(text);
            }
        }
    }

    /// The check with its violations and notes [`capped`].
    fn capped(mut self) -> Check {
        self.violations = capped(self.violations);
        self.notes = capped(self.notes);
        self
    }
}

/// Every check, in report order. `redriven`: the ids of messages that sat in a DLQ earlier
/// (an order broken by their redrive is SQS's FIFO-with-DLQ design, reported as a note).
pub fn check(
    calls: &[Call],
    samples: &[Sample],
    o: &Observed,
    redriven: &BTreeSet<String>,
) -> Vec<Check> {
    vec![
        answers(calls, o),
        agent_commands(calls, o),
        agent_order(calls, o, redriven),
        capacity(samples, o),
        conversations(calls, samples, o),
        matches(calls, o),
        messages(calls, samples, o),
        trades(calls, o, redriven),
        positions(o),
        ledger(o),
        analytics(o),
    ]
}

/// An exact decimal (a JSON string or number) in units of 10⁻¹⁶: every amount the system
/// shows fits (at most 1e12 with 16 places), and sums of them are exact.
pub fn dec(v: &Value) -> Option<i128> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let (neg, digits) = text
        .strip_prefix('-')
        .map_or((false, text.as_str()), |d| (true, d));
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > 16 || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: i128 = format!("{frac:0<16}").parse().ok()?;
    let units = int.checked_mul(10i128.pow(16))?.checked_add(frac)?;
    Some(if neg { -units } else { units })
}

/// `q × p` of two amounts of at most 8 places, in 10⁻¹⁶.
fn notional(q: i128, p: i128) -> i128 {
    (q / 100_000_000) * (p / 100_000_000)
}

/// Caps a list of violations: the first 20, then how many more.
fn capped(mut v: Vec<String>) -> Vec<String> {
    if v.len() > 20 {
        let more = v.len() - 20;
        v.truncate(20);
        v.push(format!("… and {more} more"));
    }
    v
}

fn status(v: &Value) -> &str {
    v["status"].as_str().unwrap_or_default()
}

/// Every request got a final answer the contract allows for it: no `5xx` or transport error
/// that outlasted the retries, no refusal of a valid request, no key stuck in progress; and
/// every read of the checks answered.
fn answers(calls: &[Call], o: &Observed) -> Check {
    let mut c = Check::new("final answers", "requests answered as the contract allows");
    for call in calls {
        let legit = match call.status {
            202 => call.op != Op::Match,
            200 => call.op == Op::Match,
            409 => call.got("type").is_none_or(|t| !t.ends_with("in-progress")),
            404 => {
                c.notes.push(format!(
                    "{} {} → 404 ({})",
                    call.op.route(),
                    call.path,
                    call.correlation
                ));
                true
            }
            _ => false,
        };
        if legit {
            c.ok += 1;
        } else {
            c.violations.push(format!(
                "{} {} → {} after {} attempts {:?} (correlation {}): {}",
                call.op.route(),
                call.path,
                call.status,
                call.attempts.len(),
                call.attempts,
                call.correlation,
                call.answer
            ));
        }
    }
    c.violations
        .extend(o.unread.iter().map(|r| format!("read failed: {r}")));
    c.capped()
}

/// The calls of `op` whose final answer was `202`.
fn accepted(calls: &[Call], op: Op) -> impl Iterator<Item = &Call> {
    calls.iter().filter(move |c| c.op == op && c.is(202))
}

/// Applied (or rejected) once each: every accepted agent command has an outcome, or is in a
/// DLQ; each agent's APPLIED versions are exactly 1…its version (no command applied twice, no
/// command applied that no `202` names); a command is REJECTED only for a precondition it
/// carried.
fn agent_commands(calls: &[Call], o: &Observed) -> Check {
    let mut c = Check::new(
        "agent commands applied exactly once",
        "accepted agent commands applied or rejected exactly once",
    );
    let mut versions: BTreeMap<&str, Vec<(u64, &Call)>> = BTreeMap::new();
    for call in accepted(calls, Op::Register).chain(accepted(calls, Op::State)) {
        let (agent, Some(id)) = (call.segment(1), call.got("commandId")) else {
            continue;
        };
        match o.commands.get(id) {
            Some(Some(v)) if status(v) == "APPLIED" => {
                versions
                    .entry(agent)
                    .or_default()
                    .push((v["version"].as_u64().unwrap_or(0), call));
                c.ok += 1;
            }
            Some(Some(v)) if status(v) == "REJECTED" => {
                if call.body.get("version").is_some() {
                    c.ok += 1;
                } else {
                    c.violations.push(format!(
                        "command {id} of {agent} REJECTED without a precondition: {}",
                        v["reason"]
                    ));
                }
            }
            Some(Some(v)) => c
                .violations
                .push(format!("command {id} of {agent}: unknown outcome {v}")),
            Some(None) => c.unapplied(
                o.dead_for(id),
                &format!("command {id} of {agent}"),
                &call.correlation,
            ),
            None => {}
        }
    }
    for (agent, state) in &o.agents {
        let final_version = state["version"].as_u64().unwrap_or(0);
        let mut applied = versions.remove(agent.as_str()).unwrap_or_default();
        applied.sort_by_key(|(v, _)| *v);
        for pair in applied.windows(2) {
            if pair[0].0 == pair[1].0 {
                c.violations.push(format!(
                    "{agent}: two commands applied at version {} ({} and {})",
                    pair[0].0, pair[0].1.correlation, pair[1].1.correlation
                ));
            }
        }
        let named: BTreeSet<u64> = applied.iter().map(|(v, _)| *v).collect();
        if let Some(v) = named.iter().find(|v| **v > final_version || **v == 0) {
            c.violations.push(format!(
                "{agent}: a command applied at version {v}, but the agent is at {final_version}"
            ));
        }
        let unnamed: Vec<u64> = (1..=final_version).filter(|v| !named.contains(v)).collect();
        if unnamed.is_empty() {
            continue;
        }
        let on_agent = |c: &&Call| {
            matches!(c.op, Op::Register | Op::State) && c.segment(1) == agent && c.ambiguous()
        };
        c.unexplained(calls, on_agent, unnamed.len(), |unknown, after_5xx| {
            format!(
                "{agent} is at version {final_version}, but no accepted command names versions \
                 {unnamed:?}; requests that failed (outcome unknown): {unknown}; accepted after \
                 a 5xx: {after_5xx:?}"
            )
        });
    }
    c.capped()
}

/// Observations of one object: (sent, answered, what was seen), in microseconds from the
/// run's start.
type Timed<T> = Vec<(u64, u64, T)>;

/// Pairs (earlier, later) of `items` where `later` was sent after `earlier` was answered and
/// `forward(earlier, later)` is false. `items`: (sent, answered, value).
fn regressions<T>(
    items: &[(u64, u64, T)],
    forward: impl Fn(&T, &T) -> bool,
) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, a) in items.iter().enumerate() {
        for (j, b) in items.iter().enumerate() {
            if a.1 < b.0 && !forward(&a.2, &b.2) {
                out.push((i, j));
            }
        }
    }
    out
}

/// Agent commands apply in the order they were accepted: when one's `202` came before
/// another was sent (same agent), the first applied at a lower version.
fn agent_order(calls: &[Call], o: &Observed, redriven: &BTreeSet<String>) -> Check {
    let mut c = Check::new(
        "agent commands in acceptance order",
        "pairs of applied commands of one agent, one accepted before the other was sent, \
         applied in that order",
    );
    let mut per_agent: BTreeMap<&str, Timed<(u64, &Call)>> = BTreeMap::new();
    for call in accepted(calls, Op::Register).chain(accepted(calls, Op::State)) {
        let Some(Some(v)) = call.got("commandId").and_then(|id| o.commands.get(id)) else {
            continue;
        };
        if status(v) == "APPLIED" {
            let version = v["version"].as_u64().unwrap_or(0);
            per_agent.entry(call.segment(1)).or_default().push((
                call.sent_us,
                call.done_us,
                (version, call),
            ));
        }
    }
    for items in per_agent.values() {
        c.ok += items
            .iter()
            .map(|a| items.iter().filter(|b| a.1 < b.0).count())
            .sum::<usize>();
        c.out_of_order(items, "commandId", redriven, |a, va, b, vb| {
            format!(
                "{} accepted before {} was sent, but applied at version {va} after {vb}",
                a.correlation, b.correlation
            )
        });
    }
    c.ok -= c.violations.len().min(c.ok);
    c.capped()
}

/// No agent ever over capacity (every sample, and at the end); an agent's version never goes
/// back; once every conversation is closed, no agent holds a slot.
fn capacity(samples: &[Sample], o: &Observed) -> Check {
    let mut c = Check::new(
        "capacity",
        "agent samples within capacity, versions never backwards",
    );
    let mut per_agent: BTreeMap<&str, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for s in samples {
        if let Seen::Agent {
            id,
            version,
            active,
            capacity,
        } = &s.seen
        {
            if active > capacity {
                c.violations.push(format!(
                    "{id} at {:.1} s: {active} conversations, capacity {capacity}",
                    s.done_us as f64 / 1e6
                ));
            } else {
                c.ok += 1;
            }
            per_agent
                .entry(id)
                .or_default()
                .push((s.sent_us, s.done_us, *version));
        }
    }
    for (id, items) in &per_agent {
        if let Some((i, j)) = regressions(items, |a, b| a <= b).first() {
            c.violations.push(format!(
                "{id}: version {} seen after version {}",
                items[*j].2, items[*i].2
            ));
        }
    }
    let all_closed = !o.conversations.is_empty()
        && o.conversations
            .values()
            .all(|v| v.as_ref().is_some_and(|v| status(v) == "CLOSED"));
    for (id, a) in &o.agents {
        let (active, cap) = (
            a["activeConversations"].as_u64().unwrap_or(0),
            a["capacity"].as_u64().unwrap_or(0),
        );
        if active > cap {
            c.violations.push(format!(
                "{id} ends with {active} conversations, capacity {cap}"
            ));
        }
        if all_closed && active > 0 {
            c.unless_unsettled(
                o.dead.is_empty(),
                format!("{id} holds {active} slot(s) after every conversation closed (leaked)"),
            );
        }
    }
    if !all_closed {
        c.notes
            .push("not every conversation is CLOSED: the leaked-slot check was skipped".into());
    }
    c.violations = capped(c.violations);
    c
}

fn conversation_rank(status: &str) -> u8 {
    match status {
        "PENDING" => 0,
        "QUEUED" => 1,
        "ASSIGNED" => 2,
        _ => 3,
    }
}

/// Every accepted conversation was started (not PENDING) and every accepted close applied
/// (CLOSED), or its command is in a DLQ; a conversation's status never goes back and its agent,
/// once set, never changes.
fn conversations(calls: &[Call], samples: &[Sample], o: &Observed) -> Check {
    let mut c = Check::new(
        "conversations",
        "accepted starts and closes applied once, statuses forward, one agent each",
    );
    let lost = |c: &mut Check, id: &str, command: Option<&str>, what: &str, corr: &str| {
        let dead = [Some(id), command]
            .into_iter()
            .flatten()
            .find_map(|i| o.dead_for(i));
        c.unapplied(dead, &format!("{what} of {id}"), corr);
    };
    for call in accepted(calls, Op::Start) {
        let Some(id) = call.got("conversationId") else {
            continue;
        };
        match o.conversations.get(id) {
            Some(Some(v)) if status(v) != "PENDING" => c.ok += 1,
            Some(Some(_)) => lost(
                &mut c,
                id,
                call.got("commandId"),
                "start",
                &call.correlation,
            ),
            Some(None) => c.violations.push(format!(
                "conversation {id} accepted ({}), 404",
                call.correlation
            )),
            None => {}
        }
    }
    for call in accepted(calls, Op::Close) {
        let id = call.segment(1);
        match o.conversations.get(id) {
            Some(Some(v)) if status(v) == "CLOSED" => c.ok += 1,
            Some(_) => lost(
                &mut c,
                id,
                call.got("commandId"),
                "close",
                &call.correlation,
            ),
            None => {}
        }
    }
    let mut per: BTreeMap<&str, Timed<(String, Option<String>)>> = BTreeMap::new();
    for s in samples {
        if let Seen::Conversation { id, status, agent } = &s.seen {
            per.entry(id).or_default().push((
                s.sent_us,
                s.done_us,
                (status.clone(), agent.clone()),
            ));
        }
    }
    for (id, v) in &o.conversations {
        if let (Some(v), Some(items)) = (v, per.get_mut(id.as_str())) {
            let agent = v["agentId"].as_str().map(str::to_owned);
            items.push((u64::MAX - 1, u64::MAX, (status(v).to_owned(), agent)));
        }
    }
    for (id, items) in &per {
        let forward = |a: &(String, Option<String>), b: &(String, Option<String>)| {
            conversation_rank(&a.0) <= conversation_rank(&b.0) && (a.1.is_none() || a.1 == b.1)
        };
        if let Some((i, j)) = regressions(items, forward).first() {
            c.violations.push(format!(
                "conversation {id}: {:?} seen after {:?}",
                items[*j].2, items[*i].2
            ));
        }
    }
    c.capped()
}

/// The same conversation always gets the same agent: every `200` of `POST /agents/match` for
/// a conversation names one agent, the one the conversation shows.
fn matches(calls: &[Call], o: &Observed) -> Check {
    let mut c = Check::new(
        "matches",
        "matches agreeing with each other and the conversation",
    );
    let mut agents: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.op == Op::Match && c.is(200)) {
        let (conv, Some(agent)) = (call.arg("conversationId"), call.got("agentId")) else {
            continue;
        };
        agents.entry(conv).or_default().insert(agent);
        match o
            .conversations
            .get(conv)
            .and_then(|v| v.as_ref()?["agentId"].as_str())
        {
            Some(shown) if shown != agent => c.violations.push(format!(
                "conversation {conv} matched to {agent} ({}) but shows {shown}",
                call.correlation
            )),
            _ => c.ok += 1,
        }
    }
    for (conv, set) in agents.iter().filter(|(_, s)| s.len() > 1) {
        c.violations.push(format!(
            "conversation {conv} matched to several agents: {set:?}"
        ));
    }
    c
}

fn message_forward(a: &str, b: &str) -> bool {
    let rank = |s: &str| {
        ["ACCEPTED", "SENT", "DELIVERED", "READ"]
            .iter()
            .position(|r| *r == s)
    };
    match (a, b) {
        (x, y) if x == y => true,
        ("REJECTED", _) => false,
        (x, "REJECTED") => x == "ACCEPTED",
        (x, y) => rank(x) < rank(y),
    }
}

/// Every accepted message listed exactly once and applied (or in a DLQ), no message that no
/// `202` names (a duplicate), statuses never backwards, every accepted receipt reflected.
fn messages(calls: &[Call], samples: &[Sample], o: &Observed) -> Check {
    let mut c = Check::new(
        "messages",
        "accepted messages listed once and applied, receipts applied, statuses forward",
    );
    let mut named: BTreeMap<&str, BTreeMap<&str, &Call>> = BTreeMap::new();
    for call in accepted(calls, Op::Message) {
        if let Some(id) = call.got("messageId") {
            named.entry(call.segment(1)).or_default().insert(id, call);
        }
    }
    let mut finals: BTreeMap<&str, &str> = BTreeMap::new();
    for (conv, listed) in &o.messages {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for m in listed {
            let id = m["messageId"].as_str().unwrap_or_default();
            *seen.entry(id).or_default() += 1;
            finals.insert(id, status(m));
        }
        let mine = named.get(conv.as_str());
        for (id, n) in &seen {
            if *n > 1 {
                c.violations
                    .push(format!("message {id} listed {n} times in {conv}"));
            }
        }
        for (id, call) in mine.into_iter().flatten() {
            match (seen.get(id), finals.get(id)) {
                (None, _) => c.violations.push(format!(
                    "message {id} accepted ({}) but not listed in {conv}",
                    call.correlation
                )),
                (Some(_), Some(&"ACCEPTED")) => {
                    c.unapplied(o.dead_for(id), &format!("message {id}"), &call.correlation)
                }
                _ => c.ok += 1,
            }
        }
        let orphans: Vec<(&&str, &&str)> = listed
            .iter()
            .filter_map(|m| m["messageId"].as_str())
            .filter(|id| mine.is_none_or(|n| !n.contains_key(id)))
            .filter_map(|id| finals.get_key_value(id))
            .collect();
        if orphans.is_empty() {
            continue;
        }
        let on_conv = |c: &&Call| c.op == Op::Message && c.segment(1) == conv && c.ambiguous();
        c.unexplained(calls, on_conv, orphans.len(), |unknown, after_5xx| {
            format!(
                "{conv} lists {} message(s) no 202 names {orphans:?} (ACCEPTED: a provisional \
                 record with no command behind it; else applied: a request applied twice); its \
                 requests that failed (outcome unknown): {unknown}; accepted after a 5xx: \
                 {after_5xx:?}",
                orphans.len()
            )
        });
    }
    for call in accepted(calls, Op::Receipt) {
        let (conv, id, wanted) = (call.segment(1), call.segment(3), call.arg("status"));
        match finals.get(id) {
            Some(&"REJECTED") => c.ok += 1,
            Some(now) if message_forward(wanted, now) => c.ok += 1,
            Some(now) => c.in_dlq_or(
                call.got("commandId").and_then(|i| o.dead_for(i)),
                &format!("receipt of {id}"),
                || {
                    format!(
                        "receipt {wanted} of {conv}/{id} accepted ({}), message is {now}",
                        call.correlation
                    )
                },
            ),
            None => {}
        }
    }
    let mut per: BTreeMap<&str, Vec<(u64, u64, String)>> = BTreeMap::new();
    for s in samples {
        if let Seen::Message { id, status, .. } = &s.seen {
            per.entry(id)
                .or_default()
                .push((s.sent_us, s.done_us, status.clone()));
        }
    }
    for (id, items) in &mut per {
        if let Some(now) = finals.get(id) {
            items.push((u64::MAX - 1, u64::MAX, now.to_string()));
        }
        if let Some((i, j)) = regressions(items, |a, b| message_forward(a, b)).first() {
            c.violations.push(format!(
                "message {id}: {} seen after {}",
                items[*j].2, items[*i].2
            ));
        }
    }
    c.capped()
}

/// An executed trade as the checks use it.
#[derive(Debug, Clone)]
struct Executed<'a> {
    id: &'a str,
    symbol: &'a str,
    sell: bool,
    quantity: i128,
    price: i128,
    sequence: u64,
}

/// Executed trades of `o` per account (from `GET /trades/{id}`).
fn executed(o: &Observed) -> BTreeMap<&str, Vec<Executed<'_>>> {
    let mut out: BTreeMap<&str, Vec<Executed<'_>>> = BTreeMap::new();
    for (id, t) in &o.trades {
        let Some(t) = t.as_ref().filter(|t| status(t) == "EXECUTED") else {
            continue;
        };
        out.entry(t["accountId"].as_str().unwrap_or_default())
            .or_default()
            .push(Executed {
                id,
                symbol: t["symbol"].as_str().unwrap_or_default(),
                sell: t["side"] == "SELL",
                quantity: dec(&t["quantity"]).unwrap_or(0),
                price: dec(&t["price"]).unwrap_or(0),
                sequence: t["sequence"].as_u64().unwrap_or(0),
            });
    }
    out
}

/// Every accepted trade decided once (EXECUTED or REJECTED, as ordered), or in a DLQ; each
/// account's executed trades numbered 1…n without a gap or a repeat (a gap is a trade no
/// `202` names); executed in acceptance order; a BUY is never rejected here.
fn trades(calls: &[Call], o: &Observed, redriven: &BTreeSet<String>) -> Check {
    let mut c = Check::new(
        "trades",
        "accepted trades decided exactly once, as ordered, in acceptance order",
    );
    let mut order: BTreeMap<&str, Timed<(u64, &Call)>> = BTreeMap::new();
    for call in accepted(calls, Op::Trade) {
        let Some(id) = call.got("tradeId") else {
            continue;
        };
        let Some(t) = o.trades.get(id) else {
            continue;
        };
        let Some(t) = t else {
            c.violations
                .push(format!("trade {id} accepted ({}), 404", call.correlation));
            continue;
        };
        let same = ["accountId", "symbol", "side"]
            .iter()
            .all(|k| t[*k] == call.body[*k])
            && ["quantity", "price"]
                .iter()
                .all(|k| dec(&t[*k]).is_some() && dec(&t[*k]) == dec(&call.body[*k]));
        match status(t) {
            _ if !same => c.violations.push(format!(
                "trade {id} is not the order sent ({}): {t} vs {}",
                call.correlation, call.body
            )),
            "EXECUTED" => {
                c.ok += 1;
                let seq = t["sequence"].as_u64().unwrap_or(0);
                order.entry(call.arg("accountId")).or_default().push((
                    call.sent_us,
                    call.done_us,
                    (seq, call),
                ));
            }
            "REJECTED" if call.arg("side") == "BUY" => c.violations.push(format!(
                "BUY {id} rejected ({}): {}",
                call.correlation, t["reason"]
            )),
            "REJECTED" => c.ok += 1,
            _ => c.in_dlq_or(o.dead_for(id), &format!("trade {id}"), || {
                format!(
                    "trade {id} accepted ({}), still {}, in no DLQ",
                    call.correlation,
                    status(t)
                )
            }),
        }
    }
    for (account, list) in executed(o) {
        let seqs: BTreeSet<u64> = list.iter().map(|e| e.sequence).collect();
        if seqs.len() != list.len() {
            c.violations.push(format!(
                "{account}: two executed trades share a sequence number"
            ));
        }
        let top = seqs.last().copied().unwrap_or(0);
        let gaps: Vec<u64> = (1..=top).filter(|s| !seqs.contains(s)).collect();
        if !gaps.is_empty() {
            let on =
                |c: &&Call| c.op == Op::Trade && c.arg("accountId") == account && c.ambiguous();
            c.unexplained(calls, on, gaps.len(), |unknown, after_5xx| {
                format!(
                    "{account}: sequences {gaps:?} executed by trades no 202 names; requests \
                     that failed (outcome unknown): {unknown}; accepted after a 5xx: \
                     {after_5xx:?}"
                )
            });
        }
    }
    for items in order.values() {
        c.out_of_order(items, "tradeId", redriven, |a, sa, b, sb| {
            format!(
                "trade {} accepted before {} was sent, but executed as #{sa} after #{sb}",
                a.correlation, b.correlation
            )
        });
    }
    c.capped()
}

/// Each position equals a replay of its executed trades, in what is order-independent and
/// exact: quantity = Σ BUY − Σ SELL, realizedPnl − bookCost = Σ sells − Σ buys (each q × p),
/// bookCost 0 when flat, lastSequence = the last trade's; no position without trades.
fn positions(o: &Observed) -> Check {
    let mut c = Check::new("positions", "positions equal to a replay of their trades");
    let settled = o.dead.is_empty();
    let mut expected: BTreeMap<(&str, &str), (i128, i128, u64)> = BTreeMap::new();
    for (account, list) in executed(o) {
        for e in list {
            let x = expected.entry((account, e.symbol)).or_default();
            let flow = notional(e.quantity, e.price);
            let sign = if e.sell { -1 } else { 1 };
            x.0 += sign * e.quantity;
            x.1 -= sign * flow;
            x.2 = x.2.max(e.sequence);
        }
    }
    let mut listed = BTreeSet::new();
    for (account, list) in &o.positions {
        for p in list {
            let symbol = p["symbol"].as_str().unwrap_or_default();
            listed.insert((account.as_str(), symbol));
            let Some(&(qty, flow, last)) = expected.get(&(account.as_str(), symbol)) else {
                c.unless_unsettled(
                    settled,
                    format!("{account}/{symbol}: a position without trades: {p}"),
                );
                continue;
            };
            let (q, cost, pnl) = (
                dec(&p["quantity"]),
                dec(&p["bookCost"]),
                dec(&p["realizedPnl"]),
            );
            let mut wrong = Vec::new();
            if q != Some(qty) {
                wrong.push(format!(
                    "quantity {} ≠ Σ BUY − Σ SELL {}",
                    p["quantity"],
                    show(qty)
                ));
            }
            if let (Some(cost), Some(pnl)) = (cost, pnl) {
                if pnl - cost != flow {
                    wrong.push(format!(
                        "realizedPnl − bookCost {} ≠ sells − buys {}",
                        show(pnl - cost),
                        show(flow)
                    ));
                }
                if cost < 0 || (qty == 0 && cost != 0) {
                    wrong.push(format!(
                        "bookCost {} with quantity {}",
                        show(cost),
                        show(qty)
                    ));
                }
            } else {
                wrong.push("bookCost or realizedPnl unreadable".into());
            }
            if p["lastSequence"].as_u64() != Some(last) {
                wrong.push(format!(
                    "lastSequence {} ≠ last trade #{last}",
                    p["lastSequence"]
                ));
            }
            if wrong.is_empty() {
                c.ok += 1;
            } else {
                c.unless_unsettled(settled, format!("{account}/{symbol}: {}", wrong.join("; ")));
            }
        }
    }
    for (account, symbol) in expected.keys().filter(|k| !listed.contains(*k)) {
        c.unless_unsettled(
            settled,
            format!("{account}/{symbol}: executed trades, no position"),
        );
    }
    c
}

/// A 10⁻¹⁶ amount as a decimal string.
fn show(units: i128) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let (int, frac) = (units.abs() / 10i128.pow(16), units.abs() % 10i128.pow(16));
    let frac = format!("{frac:016}");
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// Each executed trade posted once as two lines (securities and cash, ±q × p, summing to 0,
/// with its sequence), nothing posted for a trade no `202` names, and each balance the sum of
/// its lines with a total of 0.
fn ledger(o: &Observed) -> Check {
    let mut c = Check::new("ledger", "executed trades posted once, balanced");
    let settled = o.dead.is_empty();
    let executed = executed(o);
    for (account, entries) in &o.ledger {
        let mut by_trade: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
        for e in entries {
            by_trade
                .entry(e["tradeId"].as_str().unwrap_or_default())
                .or_default()
                .push(e);
            *sums
                .entry(e["account"].as_str().unwrap_or_default())
                .or_default() += dec(&e["amount"]).unwrap_or(0);
        }
        let mine = executed.get(account.as_str()).cloned().unwrap_or_default();
        for t in &mine {
            let Some(lines) = by_trade.remove(t.id) else {
                c.unless_unsettled(
                    settled,
                    format!("{account}: trade {} executed, not posted", t.id),
                );
                continue;
            };
            let amount = notional(t.quantity, t.price);
            let securities = format!("securities:{}", t.symbol);
            let (debit, credit) = if t.sell {
                ("cash", securities.as_str())
            } else {
                (securities.as_str(), "cash")
            };
            let ok = lines.len() == 2
                && lines
                    .iter()
                    .any(|l| l["account"] == debit && dec(&l["amount"]) == Some(amount))
                && lines
                    .iter()
                    .any(|l| l["account"] == credit && dec(&l["amount"]) == Some(-amount))
                && lines
                    .iter()
                    .all(|l| l["sequence"].as_u64() == Some(t.sequence));
            if ok {
                c.ok += 1;
            } else {
                c.violations.push(format!(
                    "{account}: trade {} (#{}) posted as {lines:?}",
                    t.id, t.sequence
                ));
            }
        }
        for (trade, lines) in by_trade {
            c.unless_unsettled(
                settled,
                format!("{account}: {} line(s) posted for trade {trade}, which no 202 names or which did not execute", lines.len()),
            );
        }
        let Some(b) = o.balances.get(account) else {
            continue;
        };
        let shown: BTreeMap<&str, i128> = b["balances"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), dec(v).unwrap_or(i128::MIN)))
            .collect();
        // An account whose lines sum to 0 may be listed at 0 or not at all.
        let nonzero = |m: &BTreeMap<&str, i128>| -> BTreeMap<String, i128> {
            m.iter()
                .filter(|(_, v)| **v != 0)
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect()
        };
        let nonzero_sums = nonzero(&sums);
        if nonzero(&shown) != nonzero_sums || dec(&b["total"]) != Some(0) {
            c.violations.push(format!(
                "{account}: balance {b} is not the sum of its lines {:?} with total 0",
                nonzero_sums
                    .iter()
                    .map(|(k, v)| (k, show(*v)))
                    .collect::<Vec<_>>()
            ));
        }
    }
    c
}

/// The analytics counters equal the number of distinct events they count.
fn analytics(o: &Observed) -> Check {
    let mut c = Check::new("analytics", "counters equal to the events they count");
    let settled = o.dead.is_empty();
    if o.summary.is_null() {
        return c;
    }
    let convs: Vec<&Value> = o.conversations.values().flatten().collect();
    let started = convs.iter().filter(|v| status(v) != "PENDING").count();
    let closed = convs.iter().filter(|v| status(v) == "CLOSED").count();
    let with_agent = |agent: Option<&str>| {
        convs
            .iter()
            .filter(|v| match agent {
                Some(a) => v["agentId"] == a,
                None => v["agentId"].is_string(),
            })
            .count()
    };
    let sent_statuses = ["SENT", "DELIVERED", "READ"];
    let messages = o
        .messages
        .values()
        .flatten()
        .filter(|m| sent_statuses.contains(&status(m)))
        .count();
    let trades: Vec<&Value> = o.trades.values().flatten().collect();
    let count = |s: &str| trades.iter().filter(|t| status(t) == s).count();
    let mut volume: BTreeMap<&str, (i128, i128)> = BTreeMap::new();
    for list in executed(o).values() {
        for e in list {
            let v = volume.entry(e.symbol).or_default();
            v.0 += e.quantity;
            v.1 += notional(e.quantity, e.price);
        }
    }
    let s = &o.summary;
    let n = |k: &str| s[k].as_u64().unwrap_or(u64::MAX) as usize;
    let handled: usize = o
        .agent_analytics
        .values()
        .flatten()
        .map(|a| a["conversationsHandled"].as_u64().unwrap_or(0) as usize)
        .sum();
    let mut equal = |what: &str, shown: usize, expected: usize| {
        if shown == expected {
            c.ok += 1;
        } else {
            c.unless_unsettled(settled, format!("{what}: {shown}, expected {expected}"));
        }
    };
    equal(
        "conversationsCreated (started conversations)",
        n("conversationsCreated"),
        started,
    );
    equal(
        "conversationsClosed (CLOSED conversations)",
        n("conversationsClosed"),
        closed,
    );
    equal(
        "messages (messages SENT, DELIVERED or READ)",
        n("messages"),
        messages,
    );
    equal("tradesExecuted", n("tradesExecuted"), count("EXECUTED"));
    equal("tradesRejected", n("tradesRejected"), count("REJECTED"));
    equal(
        "conversationsAssigned (Σ agents' conversationsHandled)",
        n("conversationsAssigned"),
        handled,
    );
    let assigned = n("conversationsAssigned");
    if assigned < with_agent(None) || assigned > started {
        c.unless_unsettled(
            settled,
            format!(
                "conversationsAssigned {assigned} outside [{} conversations with an agent, {started} started]",
                with_agent(None)
            ),
        );
    }
    let shown_volume: BTreeMap<&str, (Option<i128>, Option<i128>)> = s["volumeBySymbol"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), (dec(&v["quantity"]), dec(&v["notional"]))))
        .collect();
    let expected_volume: BTreeMap<&str, (Option<i128>, Option<i128>)> = volume
        .iter()
        .map(|(k, (q, n))| (*k, (Some(*q), Some(*n))))
        .collect();
    if shown_volume == expected_volume {
        c.ok += 1;
    } else {
        c.unless_unsettled(
            settled,
            format!(
                "volumeBySymbol {} ≠ executed trades' {:?}",
                s["volumeBySymbol"],
                volume
                    .iter()
                    .map(|(k, (q, n))| (k, show(*q), show(*n)))
                    .collect::<Vec<_>>()
            ),
        );
    }
    for (agent, a) in &o.agent_analytics {
        let Some(a) = a else {
            c.unless_unsettled(
                settled,
                format!("agent {agent}: no analytics (404) though registered"),
            );
            continue;
        };
        let field = |k: &str| a[k].as_u64().unwrap_or(0) as usize;
        let (handled, timed) = (field("conversationsHandled"), field("assignmentsTimed"));
        let shows = with_agent(Some(agent));
        let by_agent: usize = o
            .messages
            .iter()
            .filter(|(conv, _)| {
                o.conversations
                    .get(*conv)
                    .and_then(|v| v.as_ref())
                    .is_some_and(|v| v["agentId"] == agent.as_str())
            })
            .flat_map(|(_, list)| list)
            .filter(|m| m["sender"] == "agent" && sent_statuses.contains(&status(m)))
            .count();
        let mut wrong = Vec::new();
        if handled < shows {
            wrong.push(format!(
                "conversationsHandled {handled} < {shows} conversations show it"
            ));
        }
        if timed != handled {
            wrong.push(format!("assignmentsTimed {timed} ≠ conversationsHandled {handled} (every conversation was started)"));
        }
        if a["meanTimeToAssignMs"].is_null() != (timed == 0) {
            wrong.push(format!(
                "meanTimeToAssignMs {} with {timed} timed",
                a["meanTimeToAssignMs"]
            ));
        }
        if field("messagesSent") > by_agent {
            wrong.push(format!(
                "messagesSent {} > {by_agent} agent messages in its conversations",
                field("messagesSent")
            ));
        }
        if wrong.is_empty() {
            c.ok += 1;
        } else {
            c.unless_unsettled(settled, format!("agent {agent}: {}", wrong.join("; ")));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(op: Op, path: &str, body: Value, answer: Value, at: (u64, u64)) -> Call {
        Call {
            op,
            path: path.into(),
            body,
            correlation: format!("corr-{}", at.0),
            attempts: vec![202],
            sent_us: at.0,
            done_us: at.1,
            status: 202,
            answer,
        }
    }

    fn violations(checks: &[Check], name: &str) -> Vec<String> {
        checks
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.violations.clone())
            .unwrap_or_default()
    }

    /// Two state changes of one agent, the first accepted before the second was sent.
    fn agent_scenario(v1: u64, v2: u64, agent_version: u64) -> (Vec<Call>, Observed) {
        let changes = [
            ("AWAY", "c1", (0, 10), v1),
            ("AVAILABLE", "c2", (20, 30), v2),
        ];
        let mut o = Observed::default();
        o.agents.insert(
            "a".into(),
            json!({"version": agent_version, "activeConversations": 0, "capacity": 2}),
        );
        let mut calls = Vec::new();
        for (state, command, at, version) in changes {
            calls.push(call(
                Op::State,
                "/agents/a/state",
                json!({ "state": state }),
                json!({ "commandId": command }),
                at,
            ));
            o.commands.insert(
                command.into(),
                Some(json!({"status": "APPLIED", "version": version})),
            );
        }
        (calls, o)
    }

    #[test]
    fn consistent_agent_commands_pass_and_inconsistent_ones_fail() {
        let (calls, o) = agent_scenario(1, 2, 2);
        let checks = check(&calls, &[], &o, &BTreeSet::new());
        assert!(
            checks.iter().all(|c| c.violations.is_empty()),
            "{checks:#?}"
        );
        assert_eq!(
            checks
                .iter()
                .find(|c| c.name == "agent commands applied exactly once")
                .unwrap()
                .ok,
            2
        );

        // Applied out of acceptance order.
        let (calls, o) = agent_scenario(2, 1, 2);
        let v = violations(
            &check(&calls, &[], &o, &BTreeSet::new()),
            "agent commands in acceptance order",
        );
        assert_eq!(v.len(), 1, "{v:?}");
        // … unless one of them was redriven from a DLQ.
        let redriven = BTreeSet::from(["c1".to_owned()]);
        assert!(
            violations(
                &check(&calls, &[], &o, &redriven),
                "agent commands in acceptance order"
            )
            .is_empty()
        );

        // The agent moved further than its accepted commands: one was applied twice, or a
        // command no 202 names was applied.
        let (calls, o) = agent_scenario(1, 2, 3);
        let v = violations(
            &check(&calls, &[], &o, &BTreeSet::new()),
            "agent commands applied exactly once",
        );
        assert!(v[0].contains("versions [3]"), "{v:?}");

        // An accepted command never applied and in no DLQ is lost; in a DLQ it is a note.
        let (calls, mut o) = agent_scenario(1, 2, 1);
        o.commands.insert("c2".into(), None);
        let v = violations(
            &check(&calls, &[], &o, &BTreeSet::new()),
            "agent commands applied exactly once",
        );
        assert!(v[0].contains("never applied"), "{v:?}");
        o.dead.push(Dead {
            queue: "agent-commands".into(),
            names: BTreeSet::from(["c2".to_owned()]),
            ..Dead::default()
        });
        assert!(
            violations(
                &check(&calls, &[], &o, &BTreeSet::new()),
                "agent commands applied exactly once"
            )
            .is_empty()
        );
    }

    #[test]
    fn an_agent_over_capacity_or_going_back_a_version_is_reported() {
        let sample = |at: u64, version: u64, active: u64| Sample {
            sent_us: at,
            done_us: at + 1,
            seen: Seen::Agent {
                id: "a".into(),
                version,
                active,
                capacity: 2,
            },
        };
        let o = Observed::default();
        let ok = check(
            &[],
            &[sample(0, 1, 2), sample(10, 2, 0)],
            &o,
            &BTreeSet::new(),
        );
        assert!(violations(&ok, "capacity").is_empty());
        let bad = check(
            &[],
            &[sample(0, 2, 3), sample(10, 1, 0)],
            &o,
            &BTreeSet::new(),
        );
        assert_eq!(violations(&bad, "capacity").len(), 2, "{bad:#?}");
        // Overlapping reads are not ordered: no regression between them.
        let overlapping = [
            sample(0, 2, 0),
            Sample {
                sent_us: 0,
                done_us: 5,
                ..sample(0, 1, 0)
            },
        ];
        assert!(violations(&check(&[], &overlapping, &o, &BTreeSet::new()), "capacity").is_empty());
    }

    #[test]
    fn a_message_status_going_backwards_or_listed_twice_is_reported() {
        let seen = |at: u64, status: &str| Sample {
            sent_us: at,
            done_us: at + 1,
            seen: Seen::Message {
                conversation: "c".into(),
                id: "m".into(),
                status: status.into(),
            },
        };
        let sent = [call(
            Op::Message,
            "/conversations/c/messages",
            json!({}),
            json!({"messageId": "m"}),
            (0, 1),
        )];
        let mut o = Observed::default();
        o.messages.insert(
            "c".into(),
            vec![json!({"messageId": "m", "status": "READ"})],
        );
        let fine = check(
            &sent,
            &[seen(0, "SENT"), seen(5, "DELIVERED")],
            &o,
            &BTreeSet::new(),
        );
        assert!(violations(&fine, "messages").is_empty(), "{fine:#?}");
        let back = check(
            &sent,
            &[seen(0, "READ"), seen(5, "DELIVERED")],
            &o,
            &BTreeSet::new(),
        );
        assert_eq!(violations(&back, "messages").len(), 1);
        // A message no 202 names (a request applied twice) is a violation.
        assert_eq!(
            violations(&check(&[], &[], &o, &BTreeSet::new()), "messages").len(),
            1
        );
        o.messages.insert(
            "c".into(),
            vec![json!({"messageId": "m", "status": "SENT"}); 2],
        );
        let twice = check(&sent, &[], &o, &BTreeSet::new());
        assert!(
            violations(&twice, "messages")
                .iter()
                .any(|v| v.contains("listed 2 times"))
        );
        assert!(message_forward("ACCEPTED", "REJECTED"));
        assert!(!message_forward("SENT", "REJECTED"));
        assert!(!message_forward("REJECTED", "READ"));
    }

    fn trade(id: &str, side: &str, qty: &str, price: &str, seq: u64) -> (String, Option<Value>) {
        (
            id.into(),
            Some(json!({
                "tradeId": id, "accountId": "acc", "symbol": "ACME", "side": side,
                "quantity": qty, "price": price, "status": "EXECUTED", "sequence": seq,
            })),
        )
    }

    /// BUY 10 @ 100.50, BUY 5 @ 110, SELL 3 @ 120 (the README's example, P&L 49) and the
    /// position, ledger and analytics that go with it.
    fn trading() -> Observed {
        let mut o = Observed {
            trades: [
                trade("t1", "BUY", "10", "100.50", 1),
                trade("t2", "BUY", "5", "110", 2),
                trade("t3", "SELL", "3", "120", 3),
            ]
            .into_iter()
            .collect(),
            ..Observed::default()
        };
        o.positions.insert(
            "acc".into(),
            vec![json!({"symbol": "ACME", "quantity": "12", "bookCost": "1244", "realizedPnl": "49", "lastSequence": 3})],
        );
        let line = |t: &str, seq: u64, account: &str, amount: &str| json!({"tradeId": t, "sequence": seq, "account": account, "amount": amount});
        o.ledger.insert(
            "acc".into(),
            vec![
                line("t1", 1, "securities:ACME", "1005"),
                line("t1", 1, "cash", "-1005"),
                line("t2", 2, "securities:ACME", "550"),
                line("t2", 2, "cash", "-550"),
                line("t3", 3, "cash", "360"),
                line("t3", 3, "securities:ACME", "-360"),
            ],
        );
        o.balances.insert(
            "acc".into(),
            json!({"balances": {"cash": "-1195", "securities:ACME": "1195"}, "total": "0"}),
        );
        o.summary = json!({
            "conversationsCreated": 0, "conversationsAssigned": 0, "conversationsClosed": 0,
            "messages": 0, "tradesExecuted": 3, "tradesRejected": 0,
            "volumeBySymbol": {"ACME": {"quantity": "18", "notional": "1915"}},
        });
        o
    }

    #[test]
    fn positions_ledger_and_analytics_are_replayed_exactly() {
        let o = trading();
        let checks = check(&[], &[], &o, &BTreeSet::new());
        for name in ["positions", "ledger", "analytics", "trades"] {
            assert!(violations(&checks, name).is_empty(), "{name}: {checks:#?}");
        }

        // A P&L off by 10⁻⁸ (a rounded average), a trade posted twice, a counter counting an
        // event twice, a sequence gap: each is a violation.
        let mut bad = trading();
        bad.positions.get_mut("acc").unwrap()[0]["realizedPnl"] = json!("48.99999999");
        bad.ledger
            .get_mut("acc")
            .unwrap()
            .push(json!({"tradeId": "t9", "sequence": 4, "account": "cash", "amount": "1"}));
        bad.summary["tradesExecuted"] = json!(4);
        bad.trades
            .insert("t2".into(), trade("t2", "BUY", "5", "110", 4).1);
        let checks = check(&[], &[], &bad, &BTreeSet::new());
        for name in ["positions", "ledger", "analytics", "trades"] {
            assert!(
                !violations(&checks, name).is_empty(),
                "{name} passed: {checks:#?}"
            );
        }

        // While a DLQ holds messages, the same mismatch is a note, not a violation.
        bad.dead.push(Dead {
            queue: "positions".into(),
            ..Dead::default()
        });
        let checks = check(&[], &[], &bad, &BTreeSet::new());
        assert!(violations(&checks, "positions").is_empty());
        assert!(
            !checks
                .iter()
                .find(|c| c.name == "positions")
                .unwrap()
                .notes
                .is_empty()
        );
    }

    #[test]
    fn a_persistent_5xx_and_two_agents_for_one_conversation_are_reported() {
        let mut failed = call(Op::Trade, "/trades", json!({}), json!({}), (0, 1));
        (failed.status, failed.attempts) = (503, vec![503; 8]);
        let m = |agent: &str, at| {
            let mut c = call(
                Op::Match,
                "/agents/match",
                json!({"conversationId": "c"}),
                json!({"agentId": agent}),
                at,
            );
            c.status = 200;
            c
        };
        let checks = check(
            &[failed, m("a0", (2, 3)), m("a1", (4, 5))],
            &[],
            &Observed::default(),
            &BTreeSet::new(),
        );
        assert_eq!(violations(&checks, "final answers").len(), 1);
        assert_eq!(violations(&checks, "matches").len(), 1);
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(dec(&json!("12.5")), Some(125 * 10i128.pow(15)));
        assert_eq!(dec(&json!("-0.0000000000000001")), Some(-1));
        assert_eq!(dec(&json!(3)), Some(3 * 10i128.pow(16)));
        assert_eq!(dec(&json!("1.00000000000000001")), None);
        assert_eq!(
            notional(dec(&json!("10")).unwrap(), dec(&json!("100.50")).unwrap()),
            dec(&json!("1005")).unwrap()
        );
        assert_eq!(show(dec(&json!("-48.99999999")).unwrap()), "-48.99999999");
    }
}
