//! Engine step 4: the state and the only code that changes it — `evolve`, a plain fold over
//! [`Change`]s. Live decisions and replay from the log go through the same function, which is
//! why replaying a log rebuilds exactly the state that wrote it.

use std::collections::{HashMap, HashSet, VecDeque};

use foldhash::fast::RandomState;

use super::domain::{
    Agent, AgentId, CapacityHold, Conversation, ConversationId, ConversationState, ExternalRef,
    Millis, Seat, Sentiment, UserId,
};
use super::effect::{Change, Position, Record, Refusal, Reply};

pub(crate) type Map<K, V> = HashMap<K, V, RandomState>;
type Set<K> = HashSet<K, RandomState>;

/// A remembered answer to a command with an idempotency key.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Answer {
    pub fingerprint: u64,
    pub reply: Result<Reply, Refusal>,
    pub at: Millis,
}

/// Everything the engine decides from. Compared whole by the replay property test.
#[derive(Clone, Debug)]
pub struct State {
    /// Conversations in a slab; evicted slots are reused. The indexes below map integer keys
    /// to slots, so their entries are small enough to stay in cache and a lookup compares no
    /// strings: on 100 000 conversations that halves the cost of a message.
    slots: Vec<Option<Conversation>>,
    free_slots: Vec<u32>,
    /// Conversation id -> slot.
    by_id: Map<ConversationId, u32>,
    /// The last conversation found, with its slot: an input usually reads a conversation and
    /// then changes it, and this saves the second index probe. Cleared when slots move.
    recent: Option<(ConversationId, u32)>,
    /// Provider thread ([`ExternalRef::thread_key`]) -> slot of its live (not closed)
    /// conversation.
    pub(crate) live_threads: Map<u128, u32>,
    pub(crate) agents: Map<AgentId, Agent>,
    seen: Set<u128>,
    seen_order: VecDeque<u128>,
    dedup_window: usize,
    pub(crate) answers: Map<u128, Answer>,
    answers_order: VecDeque<(Millis, u128)>,
    idempotency_ttl: i64,
    pub(crate) last_seq: u64,
    /// The last record's [`Position`].
    pub(crate) position: Position,
}

/// Everything [`State`] holds, in a form the store can keep: restoring it and then
/// replaying the records after `last_seq` rebuilds the state exactly.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub last_seq: u64,
    /// Absent from snapshots of versions before positions: those stand at `last_seq`.
    #[serde(default)]
    position: Position,
    conversations: Vec<Conversation>,
    agents: Vec<Agent>,
    /// In the order they were seen, so the window evicts the same ids after a restore.
    seen: Vec<u128>,
    answers: Vec<(u128, Answer)>,
}

impl Snapshot {
    /// One read-only view of states kept apart (a cluster's partitions, each holding its own
    /// conversations): conversations side by side (their ids never collide, each partition
    /// draws from its own residue class), each agent's held units summed over the parts
    /// (each part counts the conversations it holds), its presence as the first part has it
    /// (every part receives every presence change). Deduplication windows and stored answers
    /// belong to the parts that write and are left out; so are the positions, which are
    /// each part's own (the view's is zero).
    pub fn merge(parts: impl IntoIterator<Item = Snapshot>) -> Snapshot {
        let mut merged = Snapshot {
            last_seq: 0,
            position: Position::default(),
            conversations: Vec::new(),
            agents: Vec::new(),
            seen: Vec::new(),
            answers: Vec::new(),
        };
        let mut agents: HashMap<AgentId, usize> = HashMap::new();
        for part in parts {
            merged.conversations.extend(part.conversations);
            for agent in part.agents {
                match agents.get(&agent.id) {
                    Some(&index) => merged.agents[index].used += agent.used,
                    None => {
                        agents.insert(agent.id.clone(), merged.agents.len());
                        // The sum of every part's own units is the whole load.
                        merged.agents.push(Agent {
                            elsewhere: 0,
                            ..agent
                        });
                    }
                }
            }
        }
        merged
    }
}

impl Snapshot {
    /// A single engine's state cut into a new cluster's `count` partitions (moving an embedded
    /// store into a cluster): each conversation goes to its thread's partition, where the
    /// thread's next events will be routed; each part holds every agent, with the units held by
    /// its own conversations and those held in the others as `elsewhere`. Deduplication windows
    /// and stored answers go to every part (a repeated event or command may arrive at any).
    /// Every part stands at the whole state's position, and at `last_seq`: their records then
    /// come after everything the state's outbox and stream ids named, so no id repeats.
    pub fn split(self, count: u32, last_seq: u64) -> Vec<Snapshot> {
        let count = count.max(1);
        let mut parts: Vec<Snapshot> = (0..count)
            .map(|_| Snapshot {
                last_seq,
                position: self.position,
                conversations: Vec::new(),
                agents: Vec::new(),
                seen: self.seen.clone(),
                answers: self.answers.clone(),
            })
            .collect();
        let mut units: Vec<HashMap<&AgentId, u32>> = vec![HashMap::new(); count as usize];
        for conversation in &self.conversations {
            let partition = crate::Partitioning::of_thread(
                count,
                conversation.external.plugin.as_str(),
                &conversation.external.key,
            ) as usize;
            if let Some(hold) = &conversation.capacity {
                *units[partition].entry(&hold.agent).or_default() += hold.units;
            }
        }
        for agent in &self.agents {
            let total: u32 = units.iter().filter_map(|part| part.get(&agent.id)).sum();
            for (part, own) in parts.iter_mut().zip(&units) {
                let used = own.get(&agent.id).copied().unwrap_or(0);
                part.agents.push(Agent {
                    used,
                    elsewhere: total - used,
                    ..agent.clone()
                });
            }
        }
        for conversation in self.conversations {
            let partition = crate::Partitioning::of_thread(
                count,
                conversation.external.plugin.as_str(),
                &conversation.external.key,
            ) as usize;
            parts[partition].conversations.push(conversation);
        }
        parts
    }

    /// The conversations the snapshot holds.
    pub fn conversations(&self) -> &[Conversation] {
        &self.conversations
    }
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.by_id.len() == other.by_id.len()
            && self
                .conversations()
                .all(|c| other.conversation(c.id) == Some(c))
            && self.live_threads.len() == other.live_threads.len()
            && self.conversations().all(|c| {
                self.live_thread(&c.external).map(|live| &live.id)
                    == other.live_thread(&c.external).map(|live| &live.id)
            })
            && self.agents == other.agents
            && self.seen == other.seen
            && self.seen_order == other.seen_order
            && self.answers == other.answers
            && self.last_seq == other.last_seq
            && self.position == other.position
    }
}

impl State {
    pub(crate) fn new(agents: &[Agent], dedup_window: usize, idempotency_ttl: i64) -> Self {
        Self {
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_id: Map::default(),
            recent: None,
            live_threads: Map::default(),
            agents: agents
                .iter()
                .map(|agent| (agent.id.clone(), agent.clone()))
                .collect(),
            seen: Set::default(),
            seen_order: VecDeque::new(),
            dedup_window: dedup_window.max(1),
            answers: Map::default(),
            answers_order: VecDeque::new(),
            idempotency_ttl,
            last_seq: 0,
            position: Position::default(),
        }
    }

    /// The state as a snapshot (conversations in slot order, so a restore reuses the same
    /// layout).
    pub fn snapshot(&self) -> Snapshot {
        let mut answers: Vec<(u128, Answer)> = self
            .answers_order
            .iter()
            .filter_map(|(_, key)| self.answers.get(key).map(|answer| (*key, answer.clone())))
            .collect();
        answers.dedup_by_key(|(key, _)| *key);
        Snapshot {
            last_seq: self.last_seq,
            position: self.position,
            conversations: self.conversations().cloned().collect(),
            agents: self.agents.values().cloned().collect(),
            seen: self.seen_order.iter().copied().collect(),
            answers,
        }
    }

    /// Rebuilds a state from a snapshot. Agents of the snapshot that the roster no longer
    /// has are dropped; roster agents the snapshot lacks keep their configured values.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        for agent in snapshot.agents {
            if let Some(current) = self.agents.get_mut(&agent.id) {
                current.presence = agent.presence;
                current.used = agent.used;
                current.elsewhere = agent.elsewhere;
            }
        }
        for conversation in snapshot.conversations {
            let slot = u32::try_from(self.slots.len()).expect("fewer than 4 billion conversations");
            if conversation.state != ConversationState::Closed {
                self.live_threads
                    .insert(conversation.external.thread_key(), slot);
            }
            self.by_id.insert(conversation.id, slot);
            self.slots.push(Some(conversation));
        }
        for key in snapshot.seen {
            if self.seen.insert(key) {
                self.seen_order.push_back(key);
            }
        }
        for (key, answer) in snapshot.answers {
            self.answers_order.push_back((answer.at, key));
            self.answers.insert(key, answer);
        }
        self.last_seq = snapshot.last_seq;
        self.position = if snapshot.position.is_zero() {
            Position {
                public: snapshot.last_seq,
                silent: 0,
            }
        } else {
            snapshot.position
        };
    }

    pub fn conversation(&self, id: ConversationId) -> Option<&Conversation> {
        let slot = match self.recent {
            Some((recent, slot)) if recent == id => slot,
            _ => *self.by_id.get(&id)?,
        };
        self.slots[slot as usize].as_ref()
    }

    fn conversation_mut(&mut self, id: ConversationId) -> Option<&mut Conversation> {
        let slot = match self.recent {
            Some((recent, slot)) if recent == id => slot,
            _ => *self.by_id.get(&id)?,
        };
        self.recent = Some((id, slot));
        self.slots[slot as usize].as_mut()
    }

    fn seat_mut(&mut self, id: ConversationId, supervisor: &UserId) -> Option<&mut Seat> {
        self.conversation_mut(id)?
            .seats
            .iter_mut()
            .find(|seat| &seat.supervisor == supervisor)
    }

    /// The live conversation of a provider thread.
    pub fn live_thread(&self, thread: &ExternalRef) -> Option<&Conversation> {
        let slot = *self.live_threads.get(&thread.thread_key())?;
        self.slots[slot as usize].as_ref()
    }

    /// [`Self::live_thread`], remembering the conversation for the change that follows.
    pub(crate) fn live_thread_mut(&mut self, thread: &ExternalRef) -> Option<&Conversation> {
        let slot = *self.live_threads.get(&thread.thread_key())?;
        let conversation = self.slots[slot as usize].as_ref()?;
        self.recent = Some((conversation.id, slot));
        Some(conversation)
    }

    /// Forgets `thread`'s live conversation if it is the one in `slot`.
    fn end_thread(&mut self, thread: u128, slot: u32) {
        if self.live_threads.get(&thread) == Some(&slot) {
            self.live_threads.remove(&thread);
        }
    }

    pub fn conversations(&self) -> impl Iterator<Item = &Conversation> {
        self.slots.iter().flatten()
    }

    /// Conversations in memory (ongoing, and closed ones not yet evicted).
    pub fn conversation_count(&self) -> usize {
        self.by_id.len()
    }

    pub fn agent(&self, id: &str) -> Option<&Agent> {
        self.agents.get(id)
    }

    pub fn agents(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values()
    }

    /// The sequence number of the last applied record.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub(crate) fn has_seen(&self, key: u128) -> bool {
        self.seen.contains(&key)
    }

    /// Applies a whole log record.
    pub fn evolve_record(&mut self, record: &Record) {
        for change in &record.changes {
            self.evolve(record.at, change);
        }
        self.last_seq = self.last_seq.max(record.seq);
        self.position = self.position.max(Position::of(record));
    }

    /// The last record's position (notification, stream and conversation ids derive from it).
    pub fn position(&self) -> Position {
        self.position
    }

    /// Applies one change. Changes that name something the state does not hold (a log
    /// written under another roster) are ignored rather than trusted.
    pub(crate) fn evolve(&mut self, at: Millis, change: &Change) {
        match change {
            Change::Opened {
                id,
                external,
                channel,
                direction,
                subject,
                customer,
                queue,
            } => {
                let conversation = Conversation {
                    id: *id,
                    external: external.clone(),
                    channel: *channel,
                    direction: *direction,
                    state: ConversationState::Open,
                    subject: subject.clone(),
                    customer: customer.clone(),
                    queue: queue.clone(),
                    agent: None,
                    consultants: Vec::new(),
                    seats: Vec::new(),
                    created_at: at,
                    accepted_at: None,
                    wrap_up_at: None,
                    ended_at: None,
                    last_activity: at,
                    last_customer_message: None,
                    sentiment: Sentiment::default(),
                    capacity: None,
                    provider_ids: Vec::new(),
                    last_delivery: None,
                };
                let slot = match self.free_slots.pop() {
                    Some(slot) => {
                        self.slots[slot as usize] = Some(conversation);
                        slot
                    }
                    None => {
                        self.slots.push(Some(conversation));
                        u32::try_from(self.slots.len() - 1)
                            .expect("fewer than 4 billion conversations")
                    }
                };
                self.by_id.insert(*id, slot);
                self.live_threads.insert(external.thread_key(), slot);
            }
            Change::StateChanged { id, to } => {
                let Some(conversation) = self.conversation_mut(*id) else {
                    return;
                };
                conversation.state = *to;
                match to {
                    ConversationState::Active if conversation.accepted_at.is_none() => {
                        conversation.accepted_at = Some(at);
                    }
                    ConversationState::WrapUp => conversation.wrap_up_at = Some(at),
                    ConversationState::Closed => {
                        conversation.ended_at = Some(at);
                        let thread = conversation.external.thread_key();
                        if let Some(&slot) = self.by_id.get(id) {
                            self.end_thread(thread, slot);
                        }
                    }
                    _ => {}
                }
            }
            Change::AgentSet { id, agent } => {
                if let Some(conversation) = self.conversation_mut(*id) {
                    conversation.agent = agent.clone();
                }
            }
            Change::ConsultantAdded { id, agent } => {
                if let Some(conversation) = self.conversation_mut(*id)
                    && !conversation.consultants.contains(agent)
                {
                    conversation.consultants.push(agent.clone());
                }
            }
            Change::ConsultantRemoved { id, agent } => {
                if let Some(conversation) = self.conversation_mut(*id) {
                    conversation.consultants.retain(|held| held != agent);
                }
            }
            Change::QueueChanged { id, queue } => {
                if let Some(conversation) = self.conversation_mut(*id) {
                    conversation.queue = queue.clone();
                }
            }
            Change::SubjectChanged { id, subject } => {
                if let Some(conversation) = self.conversation_mut(*id) {
                    conversation.subject = subject.clone();
                }
            }
            Change::ProviderMessage {
                id,
                provider_id,
                message_id,
            } => {
                if let Some(conversation) = self.conversation_mut(*id) {
                    let kept = &mut conversation.provider_ids;
                    if kept.len() == Conversation::PROVIDER_IDS_KEPT {
                        kept.remove(0);
                    }
                    kept.push((provider_id.clone(), message_id.clone()));
                }
            }
            Change::SeatTaken {
                id,
                supervisor,
                mode,
            } => {
                if let Some(conversation) = self.conversation_mut(*id) {
                    conversation.seats.push(Seat {
                        supervisor: supervisor.clone(),
                        mode: *mode,
                        since: at,
                        media: None,
                    });
                }
            }
            Change::SeatChanged {
                id,
                supervisor,
                mode,
            } => {
                if let Some(seat) = self.seat_mut(*id, supervisor) {
                    seat.mode = *mode;
                }
            }
            Change::Delivery {
                id,
                message_id,
                status,
            } => {
                if let Some(conversation) = self.conversation_mut(*id) {
                    conversation.last_delivery = Some((message_id.clone(), *status));
                }
            }
            Change::SeatMedia {
                id,
                supervisor,
                media,
            } => {
                if let Some(seat) = self.seat_mut(*id, supervisor) {
                    seat.media = Some(*media);
                }
            }
            Change::SeatReleased { id, supervisor } => {
                if let Some(conversation) = self.conversation_mut(*id) {
                    conversation
                        .seats
                        .retain(|seat| &seat.supervisor != supervisor);
                }
            }
            Change::CapacityHeld { id, agent, units } => {
                let Some(conversation) = self
                    .by_id
                    .get(id)
                    .and_then(|&slot| self.slots[slot as usize].as_mut())
                else {
                    return;
                };
                if let Some(previous) = conversation.capacity.take()
                    && let Some(held_by) = self.agents.get_mut(&previous.agent)
                {
                    held_by.used = held_by.used.saturating_sub(previous.units);
                }
                if let Some(holder) = self.agents.get_mut(agent) {
                    holder.used += units;
                    conversation.capacity = Some(CapacityHold {
                        agent: agent.clone(),
                        units: *units,
                    });
                }
            }
            Change::CapacityReleased { id } => {
                if let Some(hold) = self
                    .by_id
                    .get(id)
                    .and_then(|&slot| self.slots[slot as usize].as_mut())
                    .and_then(|conversation| conversation.capacity.take())
                    && let Some(agent) = self.agents.get_mut(&hold.agent)
                {
                    agent.used = agent.used.saturating_sub(hold.units);
                }
            }
            Change::Activity {
                id,
                customer,
                sentiment,
            } => {
                if let Some(conversation) = self.conversation_mut(*id) {
                    conversation.last_activity = conversation.last_activity.max(at);
                    if *customer {
                        conversation.last_customer_message = Some(at);
                    }
                    if let Some(score) = sentiment {
                        conversation.sentiment.observe(*score);
                    }
                }
            }
            Change::PresenceChanged { agent, presence } => {
                if let Some(agent) = self.agents.get_mut(agent) {
                    agent.presence = *presence;
                }
            }
            Change::LoadElsewhere { agent, units } => {
                if let Some(agent) = self.agents.get_mut(agent) {
                    agent.elsewhere = *units;
                }
            }
            Change::Evicted { id } => {
                self.recent = None;
                if let Some(slot) = self.by_id.remove(id)
                    && let Some(conversation) = self.slots[slot as usize].take()
                {
                    self.end_thread(conversation.external.thread_key(), slot);
                    self.free_slots.push(slot);
                }
            }
            Change::Seen { key } => {
                if self.seen.insert(*key) {
                    self.seen_order.push_back(*key);
                    while self.seen_order.len() > self.dedup_window {
                        if let Some(oldest) = self.seen_order.pop_front() {
                            self.seen.remove(&oldest);
                        }
                    }
                }
            }
            Change::Answered {
                key,
                fingerprint,
                reply,
            } => {
                let expired_before = Millis(at.0.saturating_sub(self.idempotency_ttl));
                while let Some(&(answered_at, old)) = self.answers_order.front() {
                    if answered_at >= expired_before {
                        break;
                    }
                    self.answers_order.pop_front();
                    self.answers.remove(&old);
                }
                self.answers.insert(
                    *key,
                    Answer {
                        fingerprint: *fingerprint,
                        reply: reply.clone(),
                        at,
                    },
                );
                self.answers_order.push_back((at, *key));
            }
        }
    }
}
