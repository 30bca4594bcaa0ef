//! Ingest enrichment, between a plugin's decode and the engine: scores customer messages with
//! VADER (the `vader_sentiment` port; the only importer of that crate) and a layer of
//! customer-service complaint cues, unless the plugin supplied a score, so the engine stays
//! deterministic and replays the scores it was given.
//!
//! VADER's lexicon is general English: it reads "nobody answered … lost … refund" as mildly
//! positive (the polite words outweigh the complaint) and sarcasm ("Great, another week of
//! waiting") as positive. A complaint to a contact center is made of facts, not of negative
//! words: waiting, things lost, broken, charged twice, nobody answering. The cues below are
//! those facts; a message with any of them reads negative whatever polite or sarcastic
//! words surround it. Measured on `tests/fixtures/sentiment/labelled.tsv` (210 messages
//! labelled before the cues were written) and `heldout.tsv` (60 written after, never used
//! to tune them); the unit test prints per-class precision and recall for both, beside VADER
//! alone. The cues lift complaints read negative from 0.38 to 1.00 on the first set but only
//! from 0.25 to 0.35 on the held-out one: a phrase list covers the complaints it was written
//! from and few others, so this is a stopgap on the way to a scorer that learns, not the
//! answer (the README says so).

use std::sync::OnceLock;

use crate::engine::{ChannelEvent, EventBody, Sender};

/// One analyzer for the process: building it parses the whole lexicon.
fn analyzer() -> &'static vader_sentiment::SentimentIntensityAnalyzer<'static> {
    static ANALYZER: OnceLock<vader_sentiment::SentimentIntensityAnalyzer<'static>> =
        OnceLock::new();
    ANALYZER.get_or_init(vader_sentiment::SentimentIntensityAnalyzer::new)
}

/// What a customer writes when something went wrong (lowercase; matched as whole words).
const COMPLAINT_CUES: &[&str] = &[
    // Waiting, and nobody answering.
    "waiting",
    "wait another",
    "on hold",
    "nobody",
    "no one",
    "never arrived",
    "never came",
    "never showed up",
    "never received",
    "never authorized",
    "still no",
    "still waiting",
    "still says",
    "still billed",
    "still locked",
    "heard nothing",
    "no answer",
    "call back",
    "hung up",
    "ignore",
    "transferred from",
    "automatic reply",
    "said no one",
    // Counting the attempts and the time.
    "second time",
    "third time",
    "five times",
    "three times",
    "two weeks",
    "three weeks",
    "a month",
    "an hour",
    "took eight days",
    "was supposed to",
    "promised",
    // Things lost, broken, wrong.
    "lost",
    "losing",
    "missing",
    "damaged",
    "broken",
    "defective",
    "cracked",
    "ruined",
    "leaks",
    "dirty",
    "deleted",
    "crashing",
    "crashes",
    "stopped working",
    "doesn't work",
    "does not work",
    "didn't work",
    "doesn't even",
    "not what i ordered",
    "wrong",
    "error",
    "problem",
    "outage",
    "outages",
    "down since",
    "can't log in",
    "logged me out",
    // Money.
    "charged twice",
    "charged again",
    "two charges",
    "overcharged",
    "money back",
    "full refund",
    "refunds take",
    "refund never",
    "no refund",
    "never authorized this charge",
    "billed me",
    "without any notice",
    "without telling",
    "declined",
    "rejected",
    // Ending the relationship, escalating.
    "cancel my",
    "cancelling my",
    "i cancelled",
    "got cancelled",
    "was cancelled",
    "unsubscribed",
    "manager",
    "talk to a human",
    "speak to",
    "escalated",
    // Plain discontent.
    "unacceptable",
    "ridiculous",
    "fed up",
    "disappointed",
    "unhappy",
    "worst",
    "useless",
    "thanks for nothing",
    "how you treat",
    "for no reason",
    "fixed today",
];

/// The score of a customer message in [-1, 1]: VADER's compound score, pulled below zero by
/// each complaint cue it contains.
pub fn score(text: &str) -> f32 {
    let scores = analyzer().polarity_scores(text);
    let vader = scores.get("compound").copied().unwrap_or(0.0) as f32;
    let cues = complaint_cues(text);
    if cues == 0 {
        return vader;
    }
    (vader.min(0.0) - 0.3 * cues as f32).max(-1.0)
}

/// How many complaint cues `text` contains, each matched as whole words.
fn complaint_cues(text: &str) -> usize {
    let lower = text.to_lowercase().replace('’', "'");
    COMPLAINT_CUES
        .iter()
        .filter(|cue| {
            lower.match_indices(*cue).any(|(at, found)| {
                let before = lower[..at].chars().next_back();
                let after = lower[at + found.len()..].chars().next();
                !before.is_some_and(char::is_alphanumeric)
                    && !after.is_some_and(char::is_alphanumeric)
            })
        })
        .count()
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
        for line in set
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
        {
            let mut fields = line.splitn(3, '\t');
            let (Some(expected), Some(kind), Some(text)) =
                (fields.next(), fields.next(), fields.next())
            else {
                panic!("a line of a labelled set is not label<TAB>kind<TAB>text: {line}");
            };
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

    /// The scorer against the labelled set (written and frozen before the complaint cues, then
    /// used to write them: it shows what the cues cover, not how they generalize) and the
    /// held-out set (written after the cues, never used to tune them), beside VADER alone. `cargo test -p switchboard --lib sentiment -- --nocapture`
    /// prints the tables and every message read otherwise than labelled.
    #[test]
    fn labelled_messages_read_as_labelled() {
        let vader = |text: &str| {
            analyzer()
                .polarity_scores(text)
                .get("compound")
                .copied()
                .unwrap_or(0.0) as f32
        };
        for (name, set) in [
            (
                "labelled",
                include_str!("../../tests/fixtures/sentiment/labelled.tsv"),
            ),
            (
                "held out",
                include_str!("../../tests/fixtures/sentiment/heldout.tsv"),
            ),
        ] {
            let baseline = evaluate(set, vader);
            let scored = evaluate(set, score);
            #[allow(clippy::print_stdout)]
            {
                println!("{name}, VADER alone:\n{}", baseline.report);
                println!("{name}, VADER and complaint cues:\n{}", scored.report);
                for line in &scored.misread {
                    println!("  {line}");
                }
            }
            if name == "labelled" {
                assert!(scored.complaint_recall >= 0.8, "{name}: {}", scored.report);
                for (label, recall) in &scored.recall {
                    assert!(*recall >= 0.6, "{name}, {label}: {}", scored.report);
                }
            } else {
                // Messages the cues were not written from: they must not read worse than
                // VADER alone (they do not yet reach 0.8 either; see the README).
                assert!(
                    scored.complaint_recall >= baseline.complaint_recall,
                    "{name}: {}",
                    scored.report
                );
                for ((label, recall), (_, before)) in scored.recall.iter().zip(&baseline.recall) {
                    assert!(
                        *recall >= before - 0.05,
                        "{name}, {label}: {}",
                        scored.report
                    );
                }
            }
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
