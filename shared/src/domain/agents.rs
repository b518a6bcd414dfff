//! The agent aggregate: profile, availability and load, with the rules that decide whether a
//! command changes anything and which event it produces.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{AgentId, ConversationId};

/// A skill tag such as `spanish` or `billing`: 1–32 characters of `[a-z0-9_-]`, case-folded so
/// that `Billing` and `billing` match.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Skill(String);

impl TryFrom<String> for Skill {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let s = s.to_ascii_lowercase();
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Skill(s))
        } else {
            Err("a skill is 1 to 32 characters of letters, digits, '-' and '_'".into())
        }
    }
}

impl From<Skill> for String {
    fn from(s: Skill) -> String {
        s.0
    }
}

impl std::str::FromStr for Skill {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Skill::try_from(s.to_owned())
    }
}

impl Skill {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A set of skills: at most [`Skills::MAX`], sorted and without duplicates so that equal sets
/// compare and serialize equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Skill>")]
pub struct Skills(Vec<Skill>);

impl Skills {
    pub const MAX: usize = 20;

    pub fn iter(&self) -> impl Iterator<Item = &Skill> {
        self.0.iter()
    }

    pub fn contains_all(&self, wanted: &Skills) -> bool {
        wanted.iter().all(|s| self.0.binary_search(s).is_ok())
    }
}

impl TryFrom<Vec<Skill>> for Skills {
    type Error = String;
    /// At most [`Skills::MAX`] as sent (the spec's `maxItems` counts them so); duplicates are
    /// then merged.
    fn try_from(mut v: Vec<Skill>) -> Result<Self, String> {
        if v.len() > Skills::MAX {
            return Err(format!("at most {} skills", Skills::MAX));
        }
        v.sort();
        v.dedup();
        Ok(Skills(v))
    }
}

/// How many conversations an agent may hold at once: 1–50 (in a request, a JSON integer, or a
/// number without a fraction such as `2.0`, which JSON Schema's `integer` admits too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "super::Whole", into = "u32")]
pub struct Capacity(u32);

impl Capacity {
    pub const MAX: u32 = 50;

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Capacity {
    type Error = String;
    fn try_from(n: u32) -> Result<Self, String> {
        if (1..=Capacity::MAX).contains(&n) {
            Ok(Capacity(n))
        } else {
            Err(format!("capacity must be between 1 and {}", Capacity::MAX))
        }
    }
}

impl TryFrom<super::Whole> for Capacity {
    type Error = String;
    fn try_from(n: super::Whole) -> Result<Self, String> {
        u32::try_from(n.0)
            .ok()
            .and_then(|n| Capacity::try_from(n).ok())
            .ok_or_else(|| format!("capacity must be between 1 and {}", Capacity::MAX))
    }
}

impl From<Capacity> for u32 {
    fn from(c: Capacity) -> u32 {
        c.0
    }
}

/// A display name: 1–100 characters, stored trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl TryFrom<String> for AgentName {
    type Error = String;
    /// 1–100 characters as sent (the spec's `maxLength` counts them so), not only white space,
    /// no control characters; kept trimmed.
    fn try_from(s: String) -> Result<Self, String> {
        if s.chars().count() > 100 || s.chars().any(char::is_control) || super::is_blank(&s) {
            Err("name must be 1 to 100 characters, not only spaces, no control characters".into())
        } else {
            Ok(AgentName(s.trim().to_owned()))
        }
    }
}

impl From<AgentName> for String {
    fn from(n: AgentName) -> String {
        n.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AgentState {
    Available,
    Away,
    Offline,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Available => "AVAILABLE",
            AgentState::Away => "AWAY",
            AgentState::Offline => "OFFLINE",
        }
    }
}

impl std::str::FromStr for AgentState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "AVAILABLE" => Ok(AgentState::Available),
            "AWAY" => Ok(AgentState::Away),
            "OFFLINE" => Ok(AgentState::Offline),
            _ => Err("state must be one of AVAILABLE, AWAY, OFFLINE".into()),
        }
    }
}

/// An agent as stored and as `GET /agents/{agentId}/state` shows it.
///
/// `version` counts the commands applied to the agent (profile updates and state changes):
/// the server issues it, one more per applied command, never a client or a clock. Commands
/// apply in the order the agents API accepted them (one FIFO message group per agent), so
/// each applied command leaves the agent one version further. `0` means the registration was
/// accepted and is not applied yet (the provisional agent the API writes at once, OFFLINE).
/// A client may send the version it last saw as a precondition (`expectedVersion`): the
/// command is then applied only if the agent is still at that version.
///
/// `activeConversations` is changed only by atomic conditional increments (match) and
/// decrements (release), never by read-modify-write, so it cannot exceed `capacity`; it
/// leaves `version` alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    pub agent_id: AgentId,
    pub name: AgentName,
    pub state: AgentState,
    pub skills: Skills,
    pub capacity: Capacity,
    pub active_conversations: u32,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
}

/// `PUT /agents/{agentId}`: create the agent (OFFLINE) or update its profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterAgent {
    pub agent_id: AgentId,
    pub name: AgentName,
    pub skills: Skills,
    pub capacity: Capacity,
    /// Apply only if the agent is at this version (absent: whatever its version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// `POST /agents/{agentId}/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeAgentState {
    pub agent_id: AgentId,
    pub state: AgentState,
    /// Apply only if the agent is at this version (absent: whatever its version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
}

/// Why an agent command was not applied. Recorded as the command's outcome, which
/// `GET /agents/{agentId}/commands/{commandId}` shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The command's precondition no longer held when its turn came: another command was
    /// applied in between.
    #[error("the agent is at version {actual}, not {expected}: another command was applied first")]
    Stale { expected: u64, actual: u64 },
    /// A state change for an agent whose registration was never applied.
    #[error("no agent {0}")]
    NoAgent(AgentId),
}

/// `Ok` when `expected` (a command's precondition) holds for an agent at `actual`.
pub fn precondition(expected: Option<u64>, actual: u64) -> Result<(), Rejection> {
    match expected {
        Some(expected) if expected != actual => Err(Rejection::Stale { expected, actual }),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRegistered {
    pub agent_id: AgentId,
    pub name: AgentName,
    pub skills: Skills,
    pub capacity: Capacity,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStateChanged {
    pub agent_id: AgentId,
    pub state: AgentState,
    pub previous_state: AgentState,
    pub skills: Skills,
    pub capacity: Capacity,
    pub active_conversations: u32,
    pub version: u64,
    pub changed_at: DateTime<Utc>,
}

/// The answer of `POST /agents/match`, and the event it publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentMatched {
    pub agent_id: AgentId,
    pub conversation_id: ConversationId,
    pub matched_at: DateTime<Utc>,
}

impl Agent {
    /// The agent the API shows as soon as its registration is accepted (version 0, OFFLINE,
    /// no conversations), before the worker applies it.
    pub fn provisional(cmd: &RegisterAgent, now: DateTime<Utc>) -> Agent {
        Agent {
            agent_id: cmd.agent_id.clone(),
            name: cmd.name.clone(),
            state: AgentState::Offline,
            skills: cmd.skills.clone(),
            capacity: cmd.capacity,
            active_conversations: 0,
            version: 0,
            updated_at: now,
        }
    }

    /// Applies a profile command: the agent one version further. A new agent starts OFFLINE
    /// with no conversations; an existing one keeps its state and load.
    pub fn register(
        current: Option<&Agent>,
        cmd: &RegisterAgent,
        now: DateTime<Utc>,
    ) -> Result<(Agent, AgentRegistered), Rejection> {
        let version = current.map_or(0, |a| a.version);
        precondition(cmd.expected_version, version)?;
        let agent = Agent {
            agent_id: cmd.agent_id.clone(),
            name: cmd.name.clone(),
            state: current.map_or(AgentState::Offline, |a| a.state),
            skills: cmd.skills.clone(),
            capacity: cmd.capacity,
            active_conversations: current.map_or(0, |a| a.active_conversations),
            version: version + 1,
            updated_at: now,
        };
        let event = AgentRegistered {
            agent_id: cmd.agent_id.clone(),
            name: cmd.name.clone(),
            skills: cmd.skills.clone(),
            capacity: cmd.capacity,
            version: agent.version,
        };
        Ok((agent, event))
    }

    /// Applies a state change: the agent one version further. A change to the state it is in
    /// advances the version too but publishes nothing.
    pub fn change_state(
        &self,
        cmd: &ChangeAgentState,
        now: DateTime<Utc>,
    ) -> Result<(Agent, Option<AgentStateChanged>), Rejection> {
        precondition(cmd.expected_version, self.version)?;
        let next = Agent {
            state: cmd.state,
            version: self.version + 1,
            updated_at: now,
            ..self.clone()
        };
        let event = (cmd.state != self.state).then(|| AgentStateChanged {
            agent_id: self.agent_id.clone(),
            state: cmd.state,
            previous_state: self.state,
            skills: self.skills.clone(),
            capacity: self.capacity,
            active_conversations: self.active_conversations,
            version: next.version,
            changed_at: now,
        });
        Ok((next, event))
    }

    /// Whether this agent may be given one more conversation needing `skills`.
    pub fn can_take(&self, skills: &Skills) -> bool {
        self.state == AgentState::Available
            && self.active_conversations < self.capacity.get()
            && self.skills.contains_all(skills)
    }
}

/// Orders the agents that can take a conversation: least loaded (by share of capacity) first.
/// Ties are broken by a rotation derived from the conversation id, so concurrent matches for
/// different conversations spread over equally loaded agents instead of all racing for the
/// first one (fewer conditional-write conflicts).
pub fn rank_candidates(
    mut agents: Vec<Agent>,
    skills: &Skills,
    conversation: &ConversationId,
) -> Vec<Agent> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    agents.retain(|a| a.can_take(skills));
    let mut h = DefaultHasher::new();
    conversation.hash(&mut h);
    let salt = h.finish();
    agents.sort_by_cached_key(|a| {
        let load = u64::from(a.active_conversations) * 1_000 / u64::from(a.capacity.get());
        let mut h = DefaultHasher::new();
        (salt, &a.agent_id).hash(&mut h);
        (load, h.finish())
    });
    agents
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skills(s: &[&str]) -> Skills {
        Skills::try_from(s.iter().map(|s| s.parse().unwrap()).collect::<Vec<Skill>>()).unwrap()
    }

    fn agent(id: &str, state: AgentState, cap: u32, active: u32) -> Agent {
        Agent {
            agent_id: id.parse().unwrap(),
            name: AgentName::try_from("Ann".to_owned()).unwrap(),
            state,
            skills: skills(&["billing", "english"]),
            capacity: Capacity::try_from(cap).unwrap(),
            active_conversations: active,
            version: 5,
            updated_at: Utc::now(),
        }
    }

    fn register(expected_version: Option<u64>) -> RegisterAgent {
        RegisterAgent {
            agent_id: "a1".parse().unwrap(),
            name: AgentName::try_from(" Bob ".to_owned()).unwrap(),
            skills: skills(&["Spanish"]),
            capacity: Capacity::try_from(3).unwrap(),
            expected_version,
        }
    }

    fn change(state: AgentState, expected_version: Option<u64>) -> ChangeAgentState {
        ChangeAgentState {
            agent_id: "a1".parse().unwrap(),
            state,
            expected_version,
        }
    }

    #[test]
    fn registration_starts_offline_and_keeps_state_and_load_on_update() {
        let (new, ev) = Agent::register(None, &register(None), Utc::now()).unwrap();
        assert_eq!(new.state, AgentState::Offline);
        assert_eq!(new.active_conversations, 0);
        assert_eq!(String::from(new.name.clone()), "Bob");
        assert_eq!(
            (new.version, ev.version),
            (1, 1),
            "the first applied command"
        );
        // Over the provisional agent the API wrote at once (version 0).
        let provisional = Agent::provisional(&register(None), Utc::now());
        assert_eq!(
            (provisional.version, provisional.state),
            (0, AgentState::Offline)
        );
        let (applied, _) =
            Agent::register(Some(&provisional), &register(Some(0)), Utc::now()).unwrap();
        assert_eq!(applied.version, 1);

        let busy = agent("a1", AgentState::Available, 5, 2);
        let (updated, ev) = Agent::register(Some(&busy), &register(None), Utc::now()).unwrap();
        assert_eq!(updated.state, AgentState::Available);
        assert_eq!(updated.active_conversations, 2);
        assert_eq!(updated.capacity.get(), 3);
        assert_eq!((updated.version, ev.version), (6, 6), "one version further");
    }

    #[test]
    fn every_applied_command_advances_the_version_by_one_whatever_it_carries() {
        let a = agent("a1", AgentState::Offline, 5, 0);
        let (b, ev) = a
            .change_state(&change(AgentState::Available, None), Utc::now())
            .unwrap();
        assert_eq!((b.state, b.version), (AgentState::Available, 6));
        let ev = ev.unwrap();
        assert_eq!((ev.previous_state, ev.version), (AgentState::Offline, 6));
        // The same state again: one version further, nothing to publish.
        let (c, ev) = b
            .change_state(&change(AgentState::Available, None), Utc::now())
            .unwrap();
        assert_eq!(c.version, 7);
        assert!(ev.is_none());
    }

    #[test]
    fn a_precondition_that_no_longer_holds_rejects_the_command() {
        let a = agent("a1", AgentState::Offline, 5, 0);
        let (b, _) = a
            .change_state(&change(AgentState::Away, Some(5)), Utc::now())
            .unwrap();
        assert_eq!(b.version, 6);
        assert_eq!(
            b.change_state(&change(AgentState::Available, Some(5)), Utc::now()),
            Err(Rejection::Stale {
                expected: 5,
                actual: 6
            })
        );
        // A version the server never issued holds for no agent.
        assert!(
            b.change_state(&change(AgentState::Available, Some(u64::MAX)), Utc::now())
                .is_err()
        );
        assert!(Agent::register(Some(&b), &register(Some(5)), Utc::now()).is_err());
        assert!(Agent::register(None, &register(Some(1)), Utc::now()).is_err());
    }

    #[test]
    fn only_available_agents_with_skills_and_room_can_take() {
        let want = skills(&["billing"]);
        assert!(agent("a", AgentState::Available, 2, 1).can_take(&want));
        assert!(!agent("a", AgentState::Available, 2, 2).can_take(&want));
        assert!(!agent("a", AgentState::Away, 2, 0).can_take(&want));
        assert!(!agent("a", AgentState::Available, 2, 0).can_take(&skills(&["french"])));
        assert!(agent("a", AgentState::Available, 2, 0).can_take(&Skills::default()));
    }

    #[test]
    fn candidates_rank_least_loaded_first() {
        let conv: ConversationId = "c1".parse().unwrap();
        let ranked = rank_candidates(
            vec![
                agent("busy", AgentState::Available, 4, 3),
                agent("full", AgentState::Available, 2, 2),
                agent("idle", AgentState::Available, 4, 0),
                agent("away", AgentState::Away, 4, 0),
            ],
            &skills(&["billing"]),
            &conv,
        );
        let ids: Vec<_> = ranked.iter().map(|a| a.agent_id.as_str()).collect();
        assert_eq!(ids, ["idle", "busy"]);
    }

    #[test]
    fn input_validation_names_the_rule() {
        assert!(Capacity::try_from(0).is_err());
        assert!(Capacity::try_from(51).is_err());
        assert!("bad skill".parse::<Skill>().is_err());
        assert_eq!("Billing".parse::<Skill>().unwrap().as_str(), "billing");
        let many: Vec<Skill> = (0..21).map(|i| format!("s{i}").parse().unwrap()).collect();
        assert!(Skills::try_from(many).is_err());
        assert!(AgentName::try_from("   ".to_owned()).is_err());
        assert!(serde_json::from_str::<AgentState>("\"BUSY\"").is_err());
    }
}
