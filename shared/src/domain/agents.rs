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
    fn try_from(mut v: Vec<Skill>) -> Result<Self, String> {
        v.sort();
        v.dedup();
        if v.len() > Skills::MAX {
            return Err(format!("at most {} skills", Skills::MAX));
        }
        Ok(Skills(v))
    }
}

/// How many conversations an agent may hold at once: 1–50.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
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

impl From<Capacity> for u32 {
    fn from(c: Capacity) -> u32 {
        c.0
    }
}

/// A display name: 1–100 characters once trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl TryFrom<String> for AgentName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() || t.chars().count() > 100 || t.chars().any(char::is_control) {
            Err("name must be 1 to 100 printable characters".into())
        } else {
            Ok(AgentName(t.to_owned()))
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
/// `version` orders state changes and `profileVersion` orders profile updates: a command is
/// applied only when its version is greater than the stored one, so stale and duplicate
/// commands change nothing whatever order SQS delivers them in. `activeConversations` is changed
/// only by atomic conditional increments (match) and decrements (release), never by
/// read-modify-write, so it cannot exceed `capacity`.
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
    pub profile_version: u64,
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
    pub version: u64,
}

/// `POST /agents/{agentId}/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeAgentState {
    pub agent_id: AgentId,
    pub state: AgentState,
    pub version: u64,
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
    /// Applies a profile command. A new agent starts OFFLINE with no conversations; an existing
    /// one keeps its state and load. `None` when the command is stale or a duplicate.
    pub fn register(
        current: Option<&Agent>,
        cmd: &RegisterAgent,
        now: DateTime<Utc>,
    ) -> Option<(Agent, AgentRegistered)> {
        if current.is_some_and(|a| cmd.version <= a.profile_version) {
            return None;
        }
        let agent = Agent {
            agent_id: cmd.agent_id.clone(),
            name: cmd.name.clone(),
            state: current.map_or(AgentState::Offline, |a| a.state),
            skills: cmd.skills.clone(),
            capacity: cmd.capacity,
            active_conversations: current.map_or(0, |a| a.active_conversations),
            version: current.map_or(0, |a| a.version),
            profile_version: cmd.version,
            updated_at: now,
        };
        let event = AgentRegistered {
            agent_id: cmd.agent_id.clone(),
            name: cmd.name.clone(),
            skills: cmd.skills.clone(),
            capacity: cmd.capacity,
            version: cmd.version,
        };
        Some((agent, event))
    }

    /// Applies a state change if it is newer than the last applied one. A newer command with the
    /// same state still advances the version (so an older one arriving later cannot undo it)
    /// but publishes nothing.
    pub fn change_state(
        &self,
        cmd: &ChangeAgentState,
        now: DateTime<Utc>,
    ) -> Option<(Agent, Option<AgentStateChanged>)> {
        if cmd.version <= self.version {
            return None;
        }
        let next = Agent {
            state: cmd.state,
            version: cmd.version,
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
            version: cmd.version,
            changed_at: now,
        });
        Some((next, event))
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
            profile_version: 5,
            updated_at: Utc::now(),
        }
    }

    fn register(version: u64) -> RegisterAgent {
        RegisterAgent {
            agent_id: "a1".parse().unwrap(),
            name: AgentName::try_from(" Bob ".to_owned()).unwrap(),
            skills: skills(&["Spanish"]),
            capacity: Capacity::try_from(3).unwrap(),
            version,
        }
    }

    #[test]
    fn registration_starts_offline_and_keeps_state_and_load_on_update() {
        let (new, ev) = Agent::register(None, &register(1), Utc::now()).unwrap();
        assert_eq!(new.state, AgentState::Offline);
        assert_eq!(new.active_conversations, 0);
        assert_eq!(String::from(new.name.clone()), "Bob");
        assert_eq!(ev.version, 1);

        let mut busy = agent("a1", AgentState::Available, 5, 2);
        busy.profile_version = 1;
        let (updated, _) = Agent::register(Some(&busy), &register(2), Utc::now()).unwrap();
        assert_eq!(updated.state, AgentState::Available);
        assert_eq!(updated.active_conversations, 2);
        assert_eq!(updated.capacity.get(), 3);
        assert_eq!(updated.version, busy.version);
    }

    #[test]
    fn stale_and_duplicate_profile_updates_change_nothing() {
        let a = agent("a1", AgentState::Available, 5, 0);
        assert!(Agent::register(Some(&a), &register(5), Utc::now()).is_none());
        assert!(Agent::register(Some(&a), &register(4), Utc::now()).is_none());
    }

    #[test]
    fn state_changes_apply_in_version_order_only() {
        let a = agent("a1", AgentState::Offline, 5, 0);
        let newer = ChangeAgentState {
            agent_id: a.agent_id.clone(),
            state: AgentState::Available,
            version: 7,
        };
        let (b, ev) = a.change_state(&newer, Utc::now()).unwrap();
        assert_eq!(b.state, AgentState::Available);
        assert_eq!(ev.unwrap().previous_state, AgentState::Offline);
        // the late, older command is ignored
        let older = ChangeAgentState {
            state: AgentState::Away,
            version: 6,
            ..newer.clone()
        };
        assert!(b.change_state(&older, Utc::now()).is_none());
        // the duplicate too
        assert!(b.change_state(&newer, Utc::now()).is_none());
        // a newer command to the same state advances the version without an event
        let same = ChangeAgentState {
            version: 8,
            ..newer
        };
        let (c, ev) = b.change_state(&same, Utc::now()).unwrap();
        assert_eq!(c.version, 8);
        assert!(ev.is_none());
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
