//! Ingest enrichment, between a plugin's decode and the engine: scores customer messages,
//! unless the plugin supplied a score, so the engine stays deterministic and replays the
//! scores it was given. The only importer of `vader_sentiment`.
//!
//! VADER alone reads a contact center's complaints wrong: its lexicon is general English, so
//! "nobody answered … lost … refund" reads mildly positive (the polite words outweigh the
//! complaint) and sarcasm ("Great, another week of waiting") positive. A complaint is made of
//! facts — waiting, things lost or broken, money taken, nobody answering, the same thing again
//! — more than of negative words. The scorer is therefore a small softmax regression (three
//! classes) over VADER's scores, concept lexicons of those facts (by word stem, so "leaking",
//! "leaked" and "leaks" are one concept), their interactions (praise words next to a failure
//! is sarcasm), the shape of the message (a question, a request) and hashed words. It learns
//! its weights, once per process and deterministically, from the messages in
//! `daemon/data/sentiment/` that are compiled into the binary (no download; a few
//! milliseconds on first use). `test.tsv` there was written and frozen before this scorer
//! and never fitted or tuned on; the unit test reports per-class precision and recall on it
//! and requires complaints read negative in at least 80 % of cases.

use std::sync::OnceLock;

use crate::engine::{ChannelEvent, EventBody, Sender};

/// One analyzer for the process: building it parses the whole lexicon.
fn analyzer() -> &'static vader_sentiment::SentimentIntensityAnalyzer<'static> {
    static ANALYZER: OnceLock<vader_sentiment::SentimentIntensityAnalyzer<'static>> =
        OnceLock::new();
    ANALYZER.get_or_init(vader_sentiment::SentimentIntensityAnalyzer::new)
}

/// The messages the model learns from (`label<TAB>kind<TAB>text`, `#` comments).
const TRAINING: &[&str] = &[
    include_str!("../data/sentiment/labelled.tsv"),
    include_str!("../data/sentiment/second.tsv"),
];

/// A concept: word stems (a token matches a stem it starts with; a stem ending in `$`
/// matches only the whole word).
struct Concept {
    name: &'static str,
    stems: &'static [&'static str],
}

/// The facts and moods of customer-service messages, in general terms (not phrases of the
/// training messages): what a complaint is about, what a satisfied customer says, and what
/// a neutral request looks like.
const CONCEPTS: &[Concept] = &[
    Concept {
        name: "negation",
        stems: &[
            "not$",
            "no$",
            "never$",
            "nothing$",
            "nobody$",
            "none$",
            "noone$",
            "nowhere$",
            "neither$",
            "nor$",
            "without$",
            "cannot$",
            "can't$",
            "cant$",
            "don't$",
            "dont$",
            "didn't$",
            "didnt$",
            "doesn't$",
            "doesnt$",
            "haven't$",
            "havent$",
            "hasn't$",
            "hasnt$",
            "hadn't$",
            "isn't$",
            "isnt$",
            "wasn't$",
            "wasnt$",
            "weren't$",
            "aren't$",
            "won't$",
            "wont$",
            "wouldn't$",
            "couldn't$",
            "shouldn't$",
        ],
    },
    Concept {
        name: "persistence",
        stems: &[
            "still$",
            "again$",
            "yet$",
            "already$",
            "keep$",
            "keeps$",
            "kept$",
            "repeated",
            "constantly$",
            "every$",
            "ever$",
            "anymore$",
            "any more$",
            "another$",
            "twice$",
            "times$",
            "third$",
            "fourth$",
            "fifth$",
            "multiple$",
            "several$",
        ],
    },
    Concept {
        name: "duration",
        stems: &[
            "minute",
            "hour",
            "day$",
            "days$",
            "week",
            "month",
            "year",
            "ages$",
            "forever$",
            "long$",
            "longer$",
            "since$",
            "overdue",
            "late$",
            "later$",
            "delay",
            "slow",
            "took$",
            "taking$",
            "wait",
            "queue",
            "hold$",
            "yesterday$",
        ],
    },
    Concept {
        name: "failure",
        stems: &[
            "broke",
            "break",
            "damag",
            "defect",
            "fault",
            "fail",
            "error",
            "wrong",
            "lost$",
            "lose$",
            "loses$",
            "losing$",
            "miss",
            "stuck$",
            "crash",
            "leak",
            "dirt",
            "filth",
            "rude",
            "cold$",
            "shatter",
            "crack",
            "soak",
            "spoil",
            "expired",
            "bug$",
            "bugs$",
            "buggy",
            "glitch",
            "froze",
            "freez",
            "drop",
            "smell",
            "stink",
            "stain",
            "scratch",
            "dent",
            "torn$",
            "ripped",
            "mould",
            "mold",
            "unusable",
            "useless",
            "dead$",
            "outage",
            "disconnect",
            "down$",
            "suspend",
            "blocked",
            "locked",
            "declin",
            "reject",
            "denied",
            "refus",
            "ignor",
            "unanswer",
            "unresolv",
            "incorrect",
            "incomplete",
            "faulty",
            "problem",
            "issue",
            "trouble",
            "mess$",
            "mistake",
            "deleted",
            "wiped",
            "gone$",
            "nowhere$",
            "stolen",
            "unreachable",
            "unavailable",
            "closed$",
            "cancelled$",
            "canceled$",
            "bricked",
            "worse",
            "poor",
            "cheap$",
            "shoddy",
            "hung$",
            "cut$",
            "noise",
            "noisy",
            "loud",
            "sick",
            "ill$",
            "hurt",
            "injur",
            "bad$",
            "stopped",
            "can't$",
            "cannot$",
            "unable",
            "impossible",
        ],
    },
    Concept {
        name: "money",
        stems: &[
            "charg",
            "overcharg",
            "refund",
            "fee$",
            "fees$",
            "bill",
            "money",
            "debit",
            "deduct",
            "compensat",
            "reimburs",
            "credit$",
            "paid$",
            "double",
            "doubled",
            "extra$",
            "penalty",
            "fine$",
        ],
    },
    Concept {
        name: "upset",
        stems: &[
            "frustrat",
            "annoy",
            "angry",
            "anger",
            "furious",
            "upset",
            "disappoint",
            "terribl",
            "awful",
            "horribl",
            "horrend",
            "worst$",
            "ridicul",
            "unacceptabl",
            "joke$",
            "disgust",
            "scam",
            "wast",
            "fed$",
            "tired$",
            "hate",
            "appall",
            "shock",
            "pathetic",
            "nightmare",
            "complain",
            "outrag",
            "incompeten",
            "insult",
            "unprofessional",
            "lied$",
            "lie$",
            "lying$",
            "liar",
            "fraud",
            "enough$",
            "seriously$",
            "unbelievabl",
            "sick$",
            "nonsense",
            "rubbish",
            "garbage",
            "crap",
            "stupid",
            "hopeless",
            "useless",
            "shame",
            "fuming",
            "livid",
            "sucks$",
            "suck$",
        ],
    },
    Concept {
        name: "escalation",
        stems: &[
            "cancel",
            "manager",
            "supervisor",
            "lawyer",
            "court$",
            "ombudsman",
            "report$",
            "review$",
            "leaving$",
            "switch",
            "competitor",
            "human$",
            "real person$",
            "escalat",
            "formal$",
            "chargeback",
            "dispute",
        ],
    },
    Concept {
        name: "thanks",
        stems: &[
            "thank",
            "thx$",
            "ty$",
            "cheers$",
            "appreciat",
            "grateful",
            "gratitude",
        ],
    },
    Concept {
        name: "praise",
        stems: &[
            "great$",
            "excellent",
            "perfect",
            "wonderful",
            "amazing",
            "brilliant",
            "fantastic",
            "love",
            "happy",
            "pleased",
            "impress",
            "helpful",
            "friendly",
            "kind$",
            "kindly$",
            "professional$",
            "recommend",
            "smooth",
            "easy$",
            "easier$",
            "quick",
            "fast$",
            "best$",
            "super$",
            "lovely",
            "well done$",
            "awesome",
            "superb",
            "outstanding",
            "delight",
            "glad$",
            "nice$",
            "good$",
            "solved",
            "sorted",
            "fixed$",
            "works$",
            "working$",
            "patient$",
            "polite",
            "spotless",
            "beautiful",
            "fabulous",
            "cool$",
            "efficient",
            "prompt",
            "reliable",
            "satisfied",
            "thrilled",
            "enjoy",
        ],
    },
    Concept {
        name: "sarcasm opener",
        stems: &[
            "oh$",
            "wow$",
            "so glad$",
            "just what$",
            "thanks a lot$",
            "yeah right$",
            "sure$",
            "clearly$",
            "obviously$",
            "apparently$",
            "only$",
            "exactly what$",
        ],
    },
    Concept {
        name: "request",
        stems: &[
            "please$",
            "could$",
            "would$",
            "can$",
            "how$",
            "what$",
            "when$",
            "where$",
            "which$",
            "who$",
            "is$",
            "are$",
            "do$",
            "does$",
            "may$",
            "like to$",
            "want to$",
            "need to$",
            "wondering",
            "info",
            "detail",
            "number$",
            "address",
            "account$",
            "order$",
            "plan$",
            "change$",
            "update$",
            "book",
            "schedule",
        ],
    },
];

/// Buckets for hashed words and word pairs, after the concept and shape features.
const HASHED: usize = 1 << 12;
const CLASSES: [&str; 3] = ["negative", "neutral", "positive"];

/// A message as the model sees it: sparse (feature, value) pairs.
type Features = Vec<(usize, f32)>;

fn tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace(['’', '‘'], "'")
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|token| token.trim_matches('\''))
        .filter(|token| !token.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A stem made ready to match: its words, and whether the last must be whole.
struct Stem {
    concept: usize,
    words: Vec<&'static str>,
    whole: bool,
}

impl Stem {
    /// Whether the words at `at` match (the last word as a prefix unless `whole`).
    fn matches(&self, tokens: &[String], at: usize) -> bool {
        let Some(candidates) = tokens.get(at..at + self.words.len()) else {
            return false;
        };
        let last = self.words.len() - 1;
        candidates
            .iter()
            .zip(&self.words)
            .enumerate()
            .all(|(offset, (token, word))| {
                if self.whole || offset < last {
                    token == word
                } else {
                    token.starts_with(word)
                }
            })
    }
}

fn stems() -> &'static [Stem] {
    static STEMS: OnceLock<Vec<Stem>> = OnceLock::new();
    STEMS.get_or_init(|| {
        CONCEPTS
            .iter()
            .enumerate()
            .flat_map(|(concept, entry)| {
                entry.stems.iter().map(move |stem| {
                    let (text, whole) = match stem.strip_suffix('$') {
                        Some(text) => (text, true),
                        None => (*stem, false),
                    };
                    Stem {
                        concept,
                        words: text.split(' ').collect(),
                        whole,
                    }
                })
            })
            .collect()
    })
}

/// The stems a token can start a match of: those whose first word begins with the token's
/// first byte (a match needs the word or the token's prefix to equal it). Checking every stem
/// at every token was most of the scorer's own cost, a visible share of the daemon's CPU per
/// message (docs/benchmarks.md, "End to end").
fn stems_starting(token: &str) -> &'static [&'static Stem] {
    static BY_FIRST_BYTE: OnceLock<Vec<Vec<&'static Stem>>> = OnceLock::new();
    let index = BY_FIRST_BYTE.get_or_init(|| {
        let mut index = vec![Vec::new(); 256];
        for stem in stems() {
            // A stem with an empty first word would match any token: listed under every byte.
            match stem.words[0].bytes().next() {
                Some(first) => index[usize::from(first)].push(stem),
                None => index.iter_mut().for_each(|bucket| bucket.push(stem)),
            }
        }
        index
    });
    token
        .bytes()
        .next()
        .map_or(&[], |first| index[usize::from(first)].as_slice())
}

fn hash(text: &str) -> usize {
    // FNV-1a: stable across builds and platforms, so a message always scores the same.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % HASHED as u64) as usize
}

/// The dense features before the hashed words: VADER's three scores, one per concept, the
/// interactions, the message's shape, and a bias.
const VADER: usize = 0;
const CONCEPT: usize = 3;
const INTERACTIONS: usize = CONCEPT + CONCEPTS.len();
const SHAPE: usize = INTERACTIONS + 4;
const BIAS: usize = SHAPE + 4;
const WORDS: usize = BIAS + 1;
const DIMENSIONS: usize = WORDS + HASHED;

fn features(text: &str) -> Features {
    let mut features = Features::new();
    let vader = analyzer().polarity_scores(text);
    let get = |key: &str| vader.get(key).copied().unwrap_or(0.0) as f32;
    features.push((VADER, get("compound")));
    features.push((VADER + 1, get("pos")));
    features.push((VADER + 2, get("neg")));

    let tokens = tokens(text);
    let mut present = [0f32; CONCEPTS.len()];
    for at in 0..tokens.len() {
        let mut here = [false; CONCEPTS.len()];
        for stem in stems_starting(&tokens[at]) {
            if !here[stem.concept] && stem.matches(&tokens, at) {
                here[stem.concept] = true;
                present[stem.concept] += 1.0;
            }
        }
    }
    for (index, count) in present.iter().enumerate() {
        if *count > 0.0 {
            // Diminishing: the second failure word says less than the first.
            features.push((CONCEPT + index, (1.0 + count).ln()));
        }
    }
    let has = |name: &str| {
        CONCEPTS
            .iter()
            .position(|concept| concept.name == name)
            .is_some_and(|index| present[index] > 0.0)
    };
    let trouble = has("failure") || has("upset") || has("duration") || has("money");
    let pleased = has("praise") || has("thanks");
    for (offset, on) in [
        // Praise beside trouble: sarcasm, or thanks for a fix ("thanks, the refund came").
        pleased && trouble,
        // Negation beside trouble: "never arrived", "not fixed".
        has("negation") && trouble,
        // Trouble that goes on: "still", "again", "every evening".
        has("persistence") && trouble,
        // Negated praise: "not happy", "not helpful".
        has("negation") && pleased,
    ]
    .into_iter()
    .enumerate()
    {
        if on {
            features.push((INTERACTIONS + offset, 1.0));
        }
    }
    let trimmed = text.trim();
    for (offset, on) in [
        trimmed.contains('?'),
        trimmed.contains('!'),
        trimmed
            .split_whitespace()
            .any(|word| word.len() > 2 && word.chars().all(|c| c.is_uppercase())),
        tokens.len() <= 4,
    ]
    .into_iter()
    .enumerate()
    {
        if on {
            features.push((SHAPE + offset, 1.0));
        }
    }
    features.push((BIAS, 1.0));
    for (index, token) in tokens.iter().enumerate() {
        features.push((WORDS + hash(token), 0.3));
        if let Some(next) = tokens.get(index + 1) {
            features.push((WORDS + hash(&format!("{token} {next}")), 0.3));
        }
    }
    features
}

/// Softmax regression weights, `[class][feature]`.
struct Model {
    weights: Vec<[f32; 3]>,
}

impl Model {
    /// Full-batch gradient descent with L2 regularization, a fixed number of steps from zero:
    /// the same weights in every process.
    fn train(sets: &[&str]) -> Self {
        let examples: Vec<(Features, usize)> = sets
            .iter()
            .flat_map(|set| labelled_lines(set))
            .map(|(label, _, text)| {
                let class = CLASSES
                    .iter()
                    .position(|class| *class == label)
                    .unwrap_or(1);
                (features(text), class)
            })
            .collect();
        let mut model = Self {
            weights: vec![[0.0; 3]; DIMENSIONS],
        };
        const STEPS: usize = 400;
        const RATE: f32 = 0.5;
        const L2: f32 = 0.002;
        let scale = 1.0 / examples.len().max(1) as f32;
        for _ in 0..STEPS {
            let mut gradient = vec![[0f32; 3]; DIMENSIONS];
            for (features, class) in &examples {
                let probabilities = model.probabilities(features);
                for (feature, value) in features {
                    for (index, probability) in probabilities.iter().enumerate() {
                        let target = if index == *class { 1.0 } else { 0.0 };
                        gradient[*feature][index] += (probability - target) * value * scale;
                    }
                }
            }
            for (weights, gradient) in model.weights.iter_mut().zip(&gradient) {
                for class in 0..3 {
                    weights[class] -= RATE * (gradient[class] + L2 * weights[class]);
                }
            }
        }
        model
    }

    fn probabilities(&self, features: &Features) -> [f32; 3] {
        let mut logits = [0f32; 3];
        for (feature, value) in features {
            for (class, logit) in logits.iter_mut().enumerate() {
                *logit += self.weights[*feature][class] * value;
            }
        }
        let top = logits.iter().copied().fold(f32::MIN, f32::max);
        let exp = logits.map(|logit| (logit - top).exp());
        let sum: f32 = exp.iter().sum();
        exp.map(|e| e / sum)
    }
}

/// `(label, kind, text)` of each line of a labelled set.
fn labelled_lines(set: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    set.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.splitn(3, '\t');
            match (fields.next(), fields.next(), fields.next()) {
                (Some(label), Some(kind), Some(text)) => (label, kind, text),
                _ => panic!("a line of a labelled set is not label<TAB>kind<TAB>text: {line}"),
            }
        })
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::train(TRAINING))
}

/// Learns the model now (a few milliseconds in a release build), so that the first
/// customer message does not wait for it.
pub fn prepare() {
    model();
}

/// The score of a customer message in [-1, 1]: the most likely class decides the side of
/// VADER's neutral band (±0.05) the score falls on, its probability how far.
pub fn score(text: &str) -> f32 {
    let [negative, neutral, positive] = model().probabilities(&features(text));
    if negative > neutral && negative >= positive {
        -(0.1 + 0.9 * negative)
    } else if positive > neutral && positive > negative {
        0.1 + 0.9 * positive
    } else {
        0.04 * (positive - negative)
    }
}

/// Fills in the sentiment of a customer message that has none.
pub fn enrich(event: &mut ChannelEvent) {
    if let EventBody::Message {
        sender: Sender::Customer,
        text,
        sentiment: sentiment @ None,
        ..
    } = &mut event.body
    {
        *sentiment = Some(score(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChannelKind, ExternalRef, Sentiment, Visibility};

    /// Per-class precision and recall on a labelled set, as the conversation's label would
    /// read after that one message (the same thresholds), for `scorer`.
    fn evaluate(set: &str, scorer: impl Fn(&str) -> f32) -> Evaluation {
        let labels = ["negative", "neutral", "positive"];
        // (expected, predicted) counts.
        let mut counts = std::collections::HashMap::<(&str, &str), usize>::new();
        let (mut complaints, mut complaints_read) = (0usize, 0usize);
        let mut misread = Vec::new();
        for (expected, kind, text) in labelled_lines(set) {
            let mut sentiment = Sentiment::default();
            sentiment.observe(scorer(text));
            let predicted = sentiment.label().unwrap_or("neutral");
            *counts.entry((expected, predicted)).or_default() += 1;
            if kind == "complaint" || kind == "sarcasm" {
                complaints += 1;
                complaints_read += usize::from(predicted == "negative");
            }
            if predicted != expected {
                misread.push(format!("{expected} read as {predicted}: {text}"));
            }
        }
        let mut evaluation = Evaluation {
            report: String::from("class      precision  recall   n\n"),
            recall: Vec::new(),
            complaint_recall: complaints_read as f64 / complaints.max(1) as f64,
            misread,
        };
        for label in labels {
            let count = |expected: &str, predicted: &str| {
                counts.get(&(expected, predicted)).copied().unwrap_or(0)
            };
            let truth: usize = labels.iter().map(|p| count(label, p)).sum();
            let said: usize = labels.iter().map(|e| count(e, label)).sum();
            let precision = count(label, label) as f64 / said.max(1) as f64;
            let recall = count(label, label) as f64 / truth.max(1) as f64;
            evaluation.recall.push((label, recall));
            evaluation.report.push_str(&format!(
                "{label:<10} {precision:>9.2}  {recall:>6.2}  {truth}\n"
            ));
        }
        evaluation.report.push_str(&format!(
            "complaints (incl. sarcasm) read negative: {:.2} of {complaints}\n",
            evaluation.complaint_recall
        ));
        evaluation
    }

    struct Evaluation {
        report: String,
        recall: Vec<(&'static str, f64)>,
        complaint_recall: f64,
        misread: Vec<String>,
    }

    /// The scorer on its training sets (how well it fits) and on the test set (written and
    /// frozen before the scorer, never fitted or tuned on: how it generalizes), beside VADER
    /// alone. `cargo test -p switchboard --lib sentiment -- --nocapture` prints the tables
    /// and every message read otherwise than labelled.
    #[test]
    fn labelled_messages_read_as_labelled() {
        let vader = |text: &str| {
            analyzer()
                .polarity_scores(text)
                .get("compound")
                .copied()
                .unwrap_or(0.0) as f32
        };
        let sets = [
            ("labelled (training)", TRAINING[0]),
            ("second (training)", TRAINING[1]),
            ("test", include_str!("../data/sentiment/test.tsv")),
        ];
        for (name, set) in sets {
            let baseline = evaluate(set, vader);
            let scored = evaluate(set, score);
            #[allow(clippy::print_stdout)]
            {
                println!("{name}, VADER alone:\n{}", baseline.report);
                println!("{name}, the scorer:\n{}", scored.report);
                for line in &scored.misread {
                    println!("  {line}");
                }
            }
            assert!(scored.complaint_recall >= 0.8, "{name}: {}", scored.report);
            for (label, recall) in &scored.recall {
                assert!(*recall >= 0.6, "{name}, {label}: {}", scored.report);
            }
        }
    }

    /// Training is deterministic: two models learned from the same messages score alike.
    #[test]
    fn the_model_learns_the_same_weights_every_time() {
        let again = Model::train(TRAINING);
        for text in [
            "My order never arrived.",
            "Thanks, all good!",
            "Where is my invoice?",
        ] {
            assert_eq!(
                again.probabilities(&features(text)),
                model().probabilities(&features(text))
            );
        }
    }

    fn customer_message(text: &str, sentiment: Option<f32>) -> ChannelEvent {
        ChannelEvent {
            id: None,
            source: "web-chat".into(),
            body: EventBody::Message {
                reply_to: None,
                conversation: ExternalRef {
                    plugin: "web-chat".into(),
                    key: "1".into(),
                },
                channel: ChannelKind::Web,
                sender: Sender::Customer,
                text: text.into(),
                visibility: Visibility::Public,
                sentiment,
                customer: None,
            },
        }
    }

    fn scored(event: &ChannelEvent) -> Option<f32> {
        match &event.body {
            EventBody::Message { sentiment, .. } => *sentiment,
            _ => None,
        }
    }

    #[test]
    fn vader_scores_customer_messages() {
        let mut happy = customer_message("Thank you so much, this is great!", None);
        let mut angry = customer_message("This is terrible, I hate waiting. Awful service.", None);
        enrich(&mut happy);
        enrich(&mut angry);
        assert!(scored(&happy).unwrap() > 0.5, "{:?}", scored(&happy));
        assert!(scored(&angry).unwrap() < -0.5, "{:?}", scored(&angry));
    }

    #[test]
    fn a_plugin_score_is_kept() {
        let mut event = customer_message("This is terrible", Some(0.25));
        enrich(&mut event);
        assert_eq!(scored(&event), Some(0.25));
    }
}
