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
