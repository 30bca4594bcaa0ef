//! Engine benchmark (issue 2): a mixed stream — 80 % customer messages, 15 % lifecycle
//! events, 5 % supervisor commands — over 100 000 ongoing conversations on one core, and the
//! memory one ongoing conversation costs (counted by a global allocator, message text
//! excluded because the engine keeps none).
//!
//! Run: `cargo bench -p switchboard-engine --bench engine`.

#![allow(clippy::print_stderr)]
// The counting allocator is the only unsafe code in the repository.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard_engine::*;

/// Counts live heap bytes, so that the state's footprint can be read off exactly.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CONVERSATIONS: usize = 100_000;
/// Conversations never closed by the workload, so supervisor commands can address them by id.
const SUPERVISED: usize = 10_000;
const TEAMS: usize = 5;
const QUEUES_PER_TEAM: usize = 4;
const AGENTS: usize = 1_000;
const PLUGINS: [(&str, ChannelKind); 4] = [
    ("web-chat", ChannelKind::Web),
    ("sms-twilio", ChannelKind::Sms),
    ("whatsapp-cloud", ChannelKind::Whatsapp),
    ("open-messaging", ChannelKind::Messaging),
];

fn setup() -> Setup {
    let teams: Vec<Team> = (0..TEAMS)
        .map(|t| Team {
            id: format!("team-{t}").as_str().into(),
            name: format!("Team {t}").into(),
            groups: Vec::new(),
        })
        .collect();
    let queues: Vec<Queue> = (0..TEAMS * QUEUES_PER_TEAM)
        .map(|q| Queue {
            id: format!("queue-{q}").as_str().into(),
            name: format!("Queue {q}").into(),
            team: teams[q / QUEUES_PER_TEAM].id.clone(),
            allowed_presences: vec![Presence::Available, Presence::Busy],
        })
        .collect();
    let agents = (0..AGENTS)
        .map(|a| Agent {
            id: format!("agent-{a}").as_str().into(),
            name: format!("Agent {a}").into(),
            presence: Presence::Available,
            capacity: 1_000,
            used: 0,
            elsewhere: 0,
            queues: vec![queues[a % queues.len()].id.clone()],
            teams: Vec::new(),
            bot: false,
        })
        .collect();
    let plugins = PLUGINS
        .iter()
        .map(|(id, channel)| PluginPolicy {
            id: (*id).into(),
            channel: *channel,
            default_queue: queues[0].id.clone(),
            voice_controls: false,
            media_supervisors: None,
        })
        .collect();
    Setup {
        teams,
        queues,
        agents,
        plugins,
        policies: Setup::default_policies(),
        dedup_window: 100_000,
        // The stream's clock runs a millisecond per input; a minute of retention keeps the
        // number of closed conversations steady at a few thousand.
        closed_retention: Millis::MINUTE,
        idempotency_ttl: 24 * Millis::HOUR,
        partitioning: None,
    }
}

/// Produces a deterministic stream consistent with the state it drives.
struct Workload {
    threads: Vec<ExternalRef>,
    channels: Vec<ChannelKind>,
    ids: Vec<ConversationId>,
    paused: Vec<bool>,
    /// Threads closed by the workload, reopened next (keeps the population constant).
    closed: Vec<usize>,
    supervising: Vec<u8>,
    supervisors: Vec<Actor>,
    agents: Vec<AgentId>,
    texts: Vec<Arc<str>>,
    n: u64,
    message_ids: u64,
    now: Millis,
}

impl Workload {
    fn new(setup: &Setup) -> Self {
        let mut threads = Vec::with_capacity(CONVERSATIONS);
        let mut channels = Vec::with_capacity(CONVERSATIONS);
        for i in 0..CONVERSATIONS {
            let (plugin, channel) = PLUGINS[i % PLUGINS.len()];
            threads.push(ExternalRef {
                plugin: plugin.into(),
                key: format!("+1555{i:07}").into(),
            });
            channels.push(channel);
        }
        let supervisors = (0..TEAMS)
            .map(|t| Actor {
                id: format!("sup-{t}").as_str().into(),
                roles: vec![Role::Supervisor],
                teams: vec![setup.teams[t].id.clone()],
            })
            .collect();
        Self {
            threads,
            channels,
            ids: Vec::new(),
            paused: vec![false; CONVERSATIONS],
            closed: Vec::new(),
            supervising: vec![0; SUPERVISED],
            supervisors,
            agents: setup.agents.iter().map(|a| a.id.clone()).collect(),
            texts: [
                "Hi, my order #1042 has not arrived yet, can you check?",
                "Thanks, that helps a lot!",
                "This is the third time I ask. Terrible service.",
                "ok",
            ]
            .iter()
            .map(|text| Arc::from(*text))
            .collect(),
            n: 0,
            message_ids: 0,
            now: Millis(1_800_000_000_000),
        }
    }

    fn started(&self, i: usize) -> Input {
        Input::Channel(ChannelEvent {
            id: None,
            source: self.threads[i].plugin.clone(),
            body: EventBody::Started {
                conversation: self.threads[i].clone(),
                channel: self.channels[i],
                direction: Direction::Inbound,
                subject: Some("Where is my order?".into()),
                customer: Customer {
                    id: self.threads[i].key.clone(),
                    name: Some("Ada Lovelace".into()),
                },
                queue: Some(
                    format!("queue-{}", i % (TEAMS * QUEUES_PER_TEAM))
                        .as_str()
                        .into(),
                ),
            },
        })
    }

    fn accepted(&self, i: usize) -> Input {
        Input::Channel(ChannelEvent {
            id: None,
            source: "canonical".into(),
            body: EventBody::Accepted {
                conversation: ConversationRef::External(self.threads[i].clone()),
                agent: self.agents[(i % (TEAMS * QUEUES_PER_TEAM)) + 20 * (i % 50)].clone(),
            },
        })
    }

    /// Builds the population: every conversation started and accepted.
    fn populate(&mut self, engine: &mut Engine) {
        let mut out = Outcome::default();
        for i in 0..CONVERSATIONS {
            engine.apply(self.started(i), self.now, &mut out);
            self.ids
                .push(out.reply.clone().unwrap().unwrap().conversation.unwrap());
            engine.apply(self.accepted(i), self.now, &mut out);
        }
    }

    /// The next input: 80 % messages, 15 % lifecycle, 5 % supervisor commands.
    fn next(&mut self) -> Input {
        self.n += 1;
        self.now = self.now.plus(1);
        let n = self.n;
        if n.is_multiple_of(1_000) {
            // Clock ticks are part of the lifecycle share: they evict and time out.
            return Input::Tick;
        }
        let slot = n % 20;
        let target = (splitmix64(n) % CONVERSATIONS as u64) as usize;
        match slot {
            0..=15 => {
                self.message_ids += 1;
                Input::Channel(ChannelEvent {
                    id: Some(format!("SM{:032x}", self.message_ids).into()),
                    source: self.threads[target].plugin.clone(),
                    body: EventBody::Message {
                        reply_to: None,
                        conversation: self.threads[target].clone(),
                        channel: self.channels[target],
                        sender: Sender::Customer,
                        text: self.texts[(n % 4) as usize].clone(),
                        visibility: Visibility::Public,
                        sentiment: Some(((n % 7) as f32 - 3.0) / 4.0),
                        customer: None,
                    },
                })
            }
            16 | 17 => {
                let conversation = ConversationRef::External(self.threads[target].clone());
                self.paused[target] = !self.paused[target];
                let body = if self.paused[target] {
                    EventBody::Paused { conversation }
                } else {
                    EventBody::Resumed { conversation }
                };
                Input::Channel(ChannelEvent {
                    id: None,
                    source: "canonical".into(),
                    body,
                })
            }
            18 => {
                // Close and restart a thread outside the supervised range: a new conversation
                // replaces the old one, keeping the population constant.
                let index = SUPERVISED + target % (CONVERSATIONS - SUPERVISED);
                if let Some(reopen) = self.closed.pop() {
                    self.paused[reopen] = false;
                    self.started(reopen)
                } else {
                    self.closed.push(index);
                    Input::Channel(ChannelEvent {
                        id: None,
                        source: "canonical".into(),
                        body: EventBody::Closed {
                            conversation: ConversationRef::External(self.threads[index].clone()),
                        },
                    })
                }
            }
            _ => {
                let index = target % SUPERVISED;
                let team = index % (TEAMS * QUEUES_PER_TEAM) / QUEUES_PER_TEAM;
                let actor = self.supervisors[team].clone();
                let conversation = self.ids[index];
                let phase = self.supervising[index];
                self.supervising[index] = (phase + 1) % 3;
                let action = match phase {
                    0 => Action::Monitor { conversation },
                    1 => Action::Whisper {
                        conversation,
                        text: self.texts[0].clone(),
                    },
                    _ => Action::Leave { conversation },
                };
                Input::Command(Command {
                    actor,
                    idempotency: None,
                    action,
                })
            }
        }
    }
}

/// A well-mixed, deterministic choice of conversation, independent of the input kind.
fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn engine_benchmarks(c: &mut Criterion) {
    let setup = setup();
    let before = live_bytes();
    let mut engine = Engine::new(setup.clone());
    let mut workload = Workload::new(&setup);
    let workload_bytes = live_bytes() - before;
    let before_population = live_bytes();
    workload.populate(&mut engine);
    // The workload keeps one id per conversation for its own use; that is not engine memory.
    let ids_bytes = (workload.ids.capacity() * std::mem::size_of::<ConversationId>()) as isize;
    let engine_bytes = live_bytes() - before_population - ids_bytes;
    let ongoing = engine
        .state()
        .conversations()
        .filter(|c| c.state.is_ongoing())
        .count();
    eprintln!(
        "sizes: Input {} bytes, Conversation {} bytes",
        std::mem::size_of::<Input>(),
        std::mem::size_of::<Conversation>()
    );
    eprintln!(
        "memory: {ongoing} ongoing conversations, {:.0} bytes each (engine state incl. indexes; \
         workload fixtures of {workload_bytes} bytes excluded)",
        engine_bytes as f64 / ongoing as f64
    );

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("mixed_stream_100k_conversations", |b| {
        let mut out = Outcome::default();
        // Inputs arrive decoded in batches of a few hundred (the AMQP prefetch) and are
        // applied while their bytes are still in cache; generating a batch is not timed.
        const BATCH: u64 = 256;
        let mut batch: Vec<(Input, Millis)> = Vec::with_capacity(BATCH as usize);
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let size = left.min(BATCH);
                left -= size;
                batch.extend((0..size).map(|_| {
                    let input = workload.next();
                    (input, workload.now)
                }));
                let start = Instant::now();
                for (input, now) in batch.drain(..) {
                    engine.apply(input, now, &mut out);
                    black_box(&out);
                }
                elapsed += start.elapsed();
            }
            elapsed
        });
    });
    group.finish();

    let ongoing = engine
        .state()
        .conversations()
        .filter(|c| c.state.is_ongoing())
        .count();
    eprintln!("after the stream: {ongoing} ongoing conversations");

    let report_actor = Actor {
        id: "sup-0".into(),
        roles: vec![Role::Supervisor],
        teams: vec!["team-0".into()],
    };
    let filter = report::ReportFilter {
        channels: vec![ChannelKind::Web],
        ..Default::default()
    };
    let now = workload.now;
    c.bench_function("engine/report_100k_filtered", |b| {
        b.iter(|| black_box(engine.ongoing(&report_actor, &filter, now)).len())
    });
}

criterion_group!(benches, engine_benchmarks);
criterion_main!(benches);
