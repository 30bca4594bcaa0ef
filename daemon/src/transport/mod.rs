//! Transport step of the flow: how provider traffic arrives and notifications leave.
//! [`amqp`] is RabbitMQ (the only lapin importer, with the `load` tool beside it). The
//! embedded transport, the default without a broker, needs no code here: the admin API's
//! `POST /v1/inbound/{plugin}` hands [`InboundMessage`]s to the pipeline's writer
//! (`service.rs`), and `app.rs` keeps the outbox readable instead of publishing it.

pub mod amqp;

/// One inbound message, as any transport delivers it.
#[derive(Clone, Debug)]
pub struct InboundMessage {
    /// Acknowledges this message and the ones before it, once everything they caused is
    /// durable (`None` for transports without acknowledgements).
    pub ack: Option<amqp::AmqpAck>,
    pub delivery_tag: u64,
    /// The plugin id, or `canonical`.
    pub routing_key: String,
    pub content_type: Option<String>,
    /// Deduplication key when the sender set one.
    pub message_id: Option<String>,
    pub redelivered: bool,
    /// The original request headers (lowercase), including `switchboard-url`.
    pub headers: Vec<(String, String)>,
    /// The provider payload, byte for byte.
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("broker refused: {0}")]
    Rejected(String),
    /// Another daemon consumes the inbound queue (one process owns every conversation
    /// without cluster mode).
    #[error("{0}")]
    Taken(String),
}
