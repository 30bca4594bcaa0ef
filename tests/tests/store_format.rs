//! Upgrading: a data directory written by the release before store formats were recorded
//! (format 1), left by a `kill -9` with its last commits still in the journal
//! (`tests/fixtures/store-format-1`, written by `make.sh` beside it), opens with today's code:
//! the journal is replayed, every record and the snapshot are read, the format is marked, and
//! the state, the timelines and the ids carry on from where that release stopped.

use std::path::{Path, PathBuf};

use switchboard::config;
use switchboard::engine::{Action, Actor, Command, ConversationId, Engine, Input, Outcome, Role};
use switchboard::engine::{SupervisionMode, TeamId, TimelineEvent, UserId};
use switchboard::store::{RedbStore, Store};
use switchboard_tests::temp_dir;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-format-1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The roster the fixture was written with (`roster.toml`, which `make.sh` used).
fn setup() -> switchboard::engine::Setup {
    let file = fixture().join("roster.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    config::parse(&file, &text, &[])
        .unwrap()
        .engine_setup(Vec::new())
}

#[test]
fn a_store_of_format_1_opens_and_carries_on() {
    let dir = temp_dir("store-format-1");
    copy_dir(&fixture().join("data"), &dir);
    let monitored = std::fs::read_to_string(fixture().join("monitored-conversation")).unwrap();
    let monitored = ConversationId::parse(monitored.trim()).unwrap();
    assert!(
        std::fs::read_dir(&dir).unwrap().any(|entry| entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("journal-")),
        "the fixture keeps commits in its journal"
    );

    let store = RedbStore::open(&dir).unwrap();
    let recovery = store.recover().unwrap();
    let mut engine = Engine::restore(setup(), recovery.snapshot, &recovery.records);
    let state = engine.state();
    assert_eq!(state.conversations().count(), 3);
    let conversation = state
        .conversation(monitored)
        .expect("the monitored conversation");
    assert_eq!(
        conversation.agent.as_ref().map(|agent| agent.as_str()),
        Some("a-ana")
    );
    let seat = conversation
        .seat(&UserId::new("sup-sam"))
        .expect("sup-sam's seat");
    assert_eq!(
        seat.mode,
        SupervisionMode::Whisper,
        "the whisper came from the journal"
    );
    let timeline = store.timeline(monitored).unwrap();
    assert!(
        timeline
            .iter()
            .any(|entry| matches!(&entry.event, TimelineEvent::Whisper { text, .. } if &**text == "Offer the refund"))
    );
    // Format 1's records stand at their log position: what comes next continues after them,
    // so no id of the old release is given again.
    let last = state.last_seq();
    assert_eq!(state.position().public, last);
    let mut out = Outcome::default();
    engine.apply(
        Input::Command(Command {
            actor: Actor {
                id: UserId::new("sup-sam"),
                roles: vec![Role::Supervisor],
                teams: vec![TeamId::new("support")],
            },
            idempotency: None,
            action: Action::Leave {
                conversation: monitored,
            },
        }),
        switchboard::engine::Millis(1_900_000_000_000),
        &mut out,
    );
    assert_eq!(out.record.position.public, last + 1);
    drop(store);
    // Marked as today's format: it opens again without a migration, and the same state.
    let again = RedbStore::open(&dir).unwrap();
    let recovery = again.recover().unwrap();
    let reopened = Engine::restore(setup(), recovery.snapshot, &recovery.records);
    assert_eq!(reopened.state().conversations().count(), 3);
    drop(again);
    let _ = std::fs::remove_dir_all(dir);
}
