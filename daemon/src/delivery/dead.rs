//! Dead deliveries, for the admin API (`GET /v1/deliveries/dead`,
//! `POST /v1/deliveries/dead/resend`): provider requests the delivery worker gave up on, kept
//! in the store (embedded) or in the broker's dead-letter queue (RabbitMQ), and sent again on
//! an admin's word, through the worker like any other request.

use std::sync::{Arc, Mutex};

use crate::service::Service;
use crate::store::{Batch, DeadDelivery};
use crate::transport::amqp::delivery::DeliveryQueue;

/// Why dead deliveries cannot be listed or sent again right now.
#[derive(Debug, thiserror::Error)]
pub enum DeadLettersError {
    /// On RabbitMQ with the worker off: the dead deliveries are the external worker's.
    #[error(
        "the delivery worker is off ([delivery] enabled = false): dead deliveries belong to the external worker"
    )]
    Disabled,
    /// On RabbitMQ while the worker's connection is down.
    #[error("the delivery worker is not connected to the broker")]
    Unavailable,
    #[error("{0}")]
    Failed(String),
}

/// Where the dead deliveries are, for the admin API.
#[derive(Debug)]
pub struct DeadLetters {
    service: Arc<Service>,
    mode: Mode,
    broker: Mutex<Option<Arc<DeliveryQueue>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Store,
    Broker,
    Disabled,
}

impl DeadLetters {
    /// Embedded transport: the store's dead deliveries.
    pub fn in_store(service: Arc<Service>) -> Self {
        Self::new(service, Mode::Store)
    }

    /// RabbitMQ with the worker on: the dead queue, through the worker's connection.
    pub fn in_broker(service: Arc<Service>) -> Self {
        Self::new(service, Mode::Broker)
    }

    /// RabbitMQ with the worker off.
    pub fn disabled(service: Arc<Service>) -> Self {
        Self::new(service, Mode::Disabled)
    }

    fn new(service: Arc<Service>, mode: Mode) -> Self {
        Self {
            service,
            mode,
            broker: Mutex::new(None),
        }
    }

    /// The worker's connection of the moment (`None` while it is down).
    pub fn set_broker(&self, queue: Option<Arc<DeliveryQueue>>) {
        *self
            .broker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = queue;
    }

    fn broker(&self) -> Result<Arc<DeliveryQueue>, DeadLettersError> {
        self.broker
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .ok_or(DeadLettersError::Unavailable)
    }

    /// Up to `limit` dead deliveries, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadDelivery>, DeadLettersError> {
        match self.mode {
            Mode::Disabled => Err(DeadLettersError::Disabled),
            Mode::Broker => self
                .broker()?
                .dead_deliveries(limit)
                .await
                .map_err(|error| DeadLettersError::Failed(error.to_string())),
            Mode::Store => {
                let store = self.service.store().clone();
                tokio::task::spawn_blocking(move || store.dead_deliveries(limit))
                    .await
                    .map_err(|error| DeadLettersError::Failed(error.to_string()))?
                    .map_err(|error| DeadLettersError::Failed(error.to_string()))
            }
        }
    }

    /// Sends the dead deliveries with these ids (all when `None`) again; returns the ids
    /// sent. Answered once they are durably back in the worker's queue.
    pub async fn resend(&self, ids: Option<Vec<String>>) -> Result<Vec<String>, DeadLettersError> {
        match self.mode {
            Mode::Disabled => Err(DeadLettersError::Disabled),
            Mode::Broker => self
                .broker()?
                .resend(ids.as_deref())
                .await
                .map_err(|error| DeadLettersError::Failed(error.to_string())),
            Mode::Store => {
                let store = self.service.store().clone();
                let resent = tokio::task::spawn_blocking(move || {
                    let chosen: Vec<String> = store
                        .dead_deliveries(usize::MAX)?
                        .into_iter()
                        .map(|dead| dead.entry.id)
                        .filter(|id| ids.as_ref().is_none_or(|ids| ids.contains(id)))
                        .collect();
                    if !chosen.is_empty() {
                        // Journaled: the answer says they are back in the outbox.
                        store.commit(&Batch {
                            resent: chosen.clone(),
                            ..Batch::default()
                        })?;
                    }
                    Ok::<_, crate::store::StoreError>(chosen)
                })
                .await
                .map_err(|error| DeadLettersError::Failed(error.to_string()))?
                .map_err(|error| DeadLettersError::Failed(error.to_string()))?;
                if !resent.is_empty() {
                    self.service
                        .delivery_rescan
                        .store(true, std::sync::atomic::Ordering::Release);
                    self.service.delivery_ready.notify_one();
                }
                Ok(resent)
            }
        }
    }
}
