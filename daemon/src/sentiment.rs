//! Ingest enrichment, between a plugin's decode and the engine: scores customer messages with
//! VADER (the `vader_sentiment` port; the only importer of that crate) unless the plugin
//! supplied a score, so the engine stays deterministic and replays the scores it was given.

use std::sync::OnceLock;

use crate::engine::{ChannelEvent, EventBody, Sender};

/// One analyzer for the process: building it parses the whole lexicon.
fn analyzer() -> &'static vader_sentiment::SentimentIntensityAnalyzer<'static> {
    static ANALYZER: OnceLock<vader_sentiment::SentimentIntensityAnalyzer<'static>> =
        OnceLock::new();
    ANALYZER.get_or_init(vader_sentiment::SentimentIntensityAnalyzer::new)
}

/// VADER's compound score of `text`, in [-1, 1].
pub fn score(text: &str) -> f32 {
    let scores = analyzer().polarity_scores(text);
    scores.get("compound").copied().unwrap_or(0.0) as f32
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
    use crate::engine::{ChannelKind, ExternalRef, Visibility};

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
