//! Partitioning for a cluster: a thread's partition is stable and spread evenly, and an engine
//! that serves a partition gives every conversation it opens an id of that partition.

use crate::testing::*;
use crate::*;

/// What one thread's partition was when the hash was chosen.
const PINNED: u32 = 9;

#[test]
fn a_threads_partition_is_stable_and_evenly_spread() {
    // Pinned: a change to the hash would move every live conversation of a cluster.
    assert_eq!(
        Partitioning::of_thread(16, "sms-twilio", "+15005550006:+14155551234"),
        PINNED
    );
    let mut counts = [0u32; 8];
    for n in 0..8_000 {
        counts[Partitioning::of_thread(8, "whatsapp-cloud", &format!("1650555{n:04}")) as usize] +=
            1;
    }
    assert!(
        counts.iter().all(|&count| (850..1_150).contains(&count)),
        "{counts:?}"
    );
    assert_eq!(Partitioning::of_thread(1, "any", "thread"), 0);
}

#[test]
fn an_engine_serving_a_partition_opens_conversations_in_it() {
    for count in [1, 3, 16, 257] {
        let partition = count / 2;
        let mut h = Harness::with(Setup {
            partitioning: Some(Partitioning { partition, count }),
            ..demo_setup()
        });
        for _ in 0..40 {
            let id = h.active("web-chat", "a-1");
            assert_eq!(Partitioning::of_conversation(count, id), partition);
            assert!(ConversationId::parse(&id.to_string()) == Some(id));
        }
    }
    // The highest ids stay within their 80 bits.
    let top = ConversationId::from_key((1 << 80) - 1);
    let placed = Partitioning {
        partition: 6,
        count: 7,
    }
    .place(top);
    assert_eq!(Partitioning::of_conversation(7, placed), 6);
    assert!(placed.key() < 1 << 80);
}

/// Agent capacity across partitions: units an agent holds in other partitions count against
/// its capacity here (assignment refuses, the queue's available agents drop it), the news is
/// recorded (it survives replay and a snapshot), and an agent left out of the news holds none
/// elsewhere any more.
#[test]
fn units_held_in_other_partitions_count_against_an_agents_capacity() {
    let mut h = Harness::new();
    let sup = supervisor("sup-1", &["support"]);
    let id = h.open("web-chat");
    // a-1 has 2 units; another partition holds both.
    let told = h.input(Input::LoadsElsewhere(vec![("a-1".into(), 2)]));
    assert_eq!(told.changes.len(), 1);
    assert_eq!(h.agent("a-1").used, 0);
    assert_eq!(h.agent("a-1").free(), 0);
    let assign = Action::Assign {
        conversation: id,
        target: AssignTarget::Agent("a-1".into()),
        override_presence: false,
        override_capacity: false,
    };
    let refusal = h
        .command(&sup, assign.clone())
        .refused(Code::CapacityExceeded)
        .clone();
    assert!(refusal.detail.contains("0 of 2"), "{}", refusal.detail);
    // The same news again changes nothing.
    assert!(
        h.input(Input::LoadsElsewhere(vec![("a-1".into(), 2)]))
            .changes
            .is_empty()
    );
    h.assert_replays();
    let restored = Engine::restore(
        h.engine.setup().clone(),
        Some(h.engine.state().snapshot()),
        &[],
    );
    let agent = |engine: &Engine| {
        engine
            .state()
            .agents()
            .find(|agent| agent.id.as_str() == "a-1")
            .cloned()
            .unwrap()
    };
    assert_eq!(agent(&restored).elsewhere, 2);
    // The other partition released them: the assignment goes through.
    h.input(Input::LoadsElsewhere(Vec::new()));
    assert_eq!(h.agent("a-1").elsewhere, 0);
    h.command(&sup, assign).ok();
    assert_eq!(h.agent("a-1").used, 1);
    // A merged view counts each partition's own units once.
    let merged = Engine::restore(
        h.engine.setup().clone(),
        Some(Snapshot::merge([
            h.engine.state().snapshot(),
            restored.state().snapshot(),
        ])),
        &[],
    );
    assert_eq!(agent(&merged).used, 1);
    assert_eq!(agent(&merged).elsewhere, 0);
    h.assert_invariants();
}

/// Moving a single engine's state into a new cluster: each conversation lands in its thread's
/// partition (where the thread's next events go), agents' units are counted where their
/// conversations are and elsewhere, every part stands after the whole state's position, and
/// the parts merged again are the state that was split.
#[test]
fn a_single_engines_state_splits_into_a_clusters_partitions() {
    let mut h = Harness::new();
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(h.active("web-chat", "a-1"));
        ids.push(h.open("sms-twilio"));
    }
    h.command(
        &supervisor("sup-1", &["support"]),
        Action::ForceClose {
            conversation: ids[2],
            reason: None,
            confirm: true,
        },
    )
    .ok();
    let whole = h.engine.state().snapshot();
    let position = h.engine.state().position();
    let count = 4;
    let parts = whole.clone().split(count, 1);
    assert_eq!(parts.len(), count as usize);
    let mut placed = 0;
    for (partition, part) in (0..count).zip(&parts) {
        let engine = Engine::restore(
            Setup {
                partitioning: Some(Partitioning { partition, count }),
                ..h.engine.setup().clone()
            },
            Some(part.clone()),
            &[],
        );
        let state = engine.state();
        assert_eq!(state.position(), position);
        assert_eq!(state.last_seq(), 1);
        for conversation in state.conversations() {
            let thread = &conversation.external;
            assert_eq!(
                Partitioning::of_thread(count, thread.plugin.as_str(), &thread.key),
                partition
            );
            if conversation.state != ConversationState::Closed {
                assert_eq!(
                    state.live_thread(thread).map(|live| live.id),
                    Some(conversation.id),
                    "the thread's next event finds its conversation"
                );
            }
            placed += 1;
        }
        let a1 = state.agent("a-1").unwrap();
        assert_eq!(a1.held(), h.agent("a-1").used, "partition {partition}");
    }
    assert_eq!(placed, whole.conversations().len());
    let merged = Engine::restore(h.engine.setup().clone(), Some(Snapshot::merge(parts)), &[]);
    for id in &ids {
        assert_eq!(
            merged.state().conversation(*id),
            h.engine.state().conversation(*id)
        );
    }
    assert_eq!(
        merged.state().agent("a-1").unwrap().used,
        h.agent("a-1").used
    );
}
