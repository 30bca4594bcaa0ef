//! Delivery step, before a request leaves: a plugin's rate limit (`plugins.<id>.rate_limit`,
//! requests per second), for providers that meter their API (Twilio's per-number throughput,
//! WhatsApp's messages per second). A token bucket holding one second's worth: a burst up to
//! the rate, then one request every `1 / rate` seconds. Requests wait their turn instead of
//! being refused, so that the provider's own rate limit is never what paces the worker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Pace {
    per_second: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Pace {
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            bucket: Mutex::new(Bucket {
                tokens: per_second,
                at: Instant::now(),
            }),
        }
    }

    /// Takes a token, or says how long until one is there (the caller waits and asks again).
    pub fn take(&self, now: Instant) -> Option<Duration> {
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.per_second);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }

    /// Waits for a token.
    pub async fn wait(&self) {
        while let Some(wait) = self.take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_up_to_the_rate_then_one_per_interval() {
        let pace = Pace::new(10);
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(pace.take(start), None);
        }
        let wait = pace.take(start).expect("the bucket is empty");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(pace.take(start + Duration::from_millis(100)), None);
        assert!(pace.take(start + Duration::from_millis(100)).is_some());
    }
}
