//! The AMQP transport against a real RabbitMQ: the topology the README's "Run on RabbitMQ" describes (quorum inbound
//! queue with an explicit delivery limit, dead queue, topic exchanges), inbound deliveries with
//! their headers, dead-lettering with `switchboard-error` and `switchboard-error-detail`, and
//! confirmed CloudEvents publication. Every run uses names of its own and deletes them.
//! Without a broker the tests skip loudly; with `SWITCHBOARD_REQUIRE_AMQP=1` they fail.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use switchboard::engine::Millis;
use switchboard::store::OutboxEntry;
use switchboard::transport::amqp::AmqpTransport;
use switchboard_tests::{Lifetime, amqp_header, amqp_names, broker_client, subscribe};

#[tokio::test]
async fn inbound_dead_letter_and_outbound_round_trip() {
    let Some(client) = broker_client().await else {
        return;
    };
    let names = amqp_names("transport");
    let transport = AmqpTransport::connect(&names, "switchboard-test")
        .await
        .unwrap();
    let channel = client.create_channel().await.unwrap();

    // A provider gateway publishes a webhook byte for byte, with its headers.
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-hub-signature-256".into(),
        AMQPValue::LongString("sha256=abc".into()),
    );
    headers.insert(
        "switchboard-url".into(),
        AMQPValue::LongString("https://example.com/hook".into()),
    );
    channel
        .basic_publish(
            names.inbound_exchange.as_str().into(),
            "whatsapp-cloud".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id("wamid.1".into())
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let mut deliveries = transport.consume("switchboard-test").await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
        .await
        .expect("a delivery within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(message.routing_key, "whatsapp-cloud");
    assert_eq!(message.body, body);
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
    assert_eq!(message.message_id.as_deref(), Some("wamid.1"));
    assert!(
        message
            .headers
            .contains(&("x-hub-signature-256".to_owned(), "sha256=abc".to_owned()))
    );
    assert!(message.headers.contains(&(
        "switchboard-url".to_owned(),
        "https://example.com/hook".to_owned()
    )));

    // It cannot be handled: dead-lettered with the reason, then acknowledged.
    transport
        .dead_letter(
            &message,
            "unauthorized",
            "X-Hub-Signature-256 does not match the body",
        )
        .await
        .unwrap();
    assert!(message.ack.as_ref().unwrap().ack_through().await.unwrap());
    let dead = channel
        .basic_get(
            names.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the message is in the dead queue");
    assert_eq!(dead.delivery.data, body, "byte for byte");
    assert_eq!(
        amqp_header(&dead.delivery.properties, "switchboard-error").as_deref(),
        Some("unauthorized")
    );
    assert_eq!(
        amqp_header(&dead.delivery.properties, "switchboard-error-detail").as_deref(),
        Some("X-Hub-Signature-256 does not match the body")
    );
    assert_eq!(
        amqp_header(&dead.delivery.properties, "x-hub-signature-256").as_deref(),
        Some("sha256=abc")
    );

    // A subscriber of one conversation receives its state changes, CloudEvents binary mode.
    let subscriber = subscribe(&channel, &names, Lifetime::Exclusive).await;
    let entry = OutboxEntry {
        id: "00000000000000000042-000001-000".to_owned(),
        routing_key: "conversation.c-0123456789abcdef0123".to_owned(),
        event_type: "dev.switchboard.conversation.state-changed".to_owned(),
        subject: Some("c-0123456789abcdef0123".to_owned()),
        time: Millis(1_749_416_383_123),
        content_type: "application/json".to_owned(),
        headers: Vec::new(),
        body: br#"{"from":"open","to":"active"}"#.to_vec(),
    };
    transport.publish(&entry).await.unwrap();
    let published = channel
        .basic_get(subscriber.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the subscriber got it");
    let properties = &published.delivery.properties;
    assert_eq!(
        amqp_header(properties, "cloudEvents_specversion").as_deref(),
        Some("1.0")
    );
    assert_eq!(
        amqp_header(properties, "cloudEvents_id").as_deref(),
        Some(entry.id.as_str())
    );
    assert_eq!(
        amqp_header(properties, "cloudEvents_source").as_deref(),
        Some("switchboard")
    );
    assert_eq!(
        amqp_header(properties, "cloudEvents_type").as_deref(),
        Some("dev.switchboard.conversation.state-changed")
    );
    assert_eq!(
        amqp_header(properties, "cloudEvents_subject").as_deref(),
        Some("c-0123456789abcdef0123")
    );
    assert_eq!(
        amqp_header(properties, "cloudEvents_time").as_deref(),
        Some("2025-06-08T20:59:43.123Z")
    );
    assert_eq!(
        properties
            .content_type()
            .as_ref()
            .map(|t| t.to_string())
            .as_deref(),
        Some("application/json")
    );
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    // Publishing to a key nobody listens to is confirmed too (mandatory, returned, not an error).
    let mut lonely = entry.clone();
    lonely.routing_key = "agent.nobody".to_owned();
    transport.publish(&lonely).await.unwrap();

    channel
        .queue_delete(subscriber.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    transport.delete_topology().await.unwrap();
    transport.close().await;
}

#[tokio::test]
async fn the_inbound_queue_is_a_quorum_queue_with_a_delivery_limit() {
    let Some(client) = broker_client().await else {
        return;
    };
    let names = amqp_names("topology");
    let transport = AmqpTransport::connect(&names, "switchboard-test")
        .await
        .unwrap();
    let channel = client.create_channel().await.unwrap();
    // Declaring it again with other arguments fails (PRECONDITION_FAILED): the broker holds
    // the quorum type and limit we declared.
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    let redeclared = channel
        .queue_declare(
            names.inbound_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            classic,
        )
        .await;
    assert!(
        redeclared.is_err(),
        "the inbound queue must be a quorum queue"
    );
    // The same declaration as the daemon's is accepted (idempotent start).
    let again = AmqpTransport::connect(&names, "switchboard-test-2")
        .await
        .unwrap();
    again.close().await;
    transport.delete_topology().await.unwrap();
    transport.close().await;
}
