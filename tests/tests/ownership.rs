//! One daemon owns the inbound queue (README, "Run on RabbitMQ": without cluster mode): a second
//! daemon started against the same broker and queue does not consume — it says why and is not ready
//! — and takes the queue over once the first one is gone.

use std::time::{Duration, Instant};

use switchboard_tests::{
    ServingBinary, amqp_names, broker_client, curl, free_port, shipped_config_text,
    switchboard_binary, temp_dir,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_inbound_queue_refuses_to_consume_until_the_first_is_gone() {
    let Some(client) = broker_client().await else {
        return;
    };
    let names = amqp_names("ownership");
    let run = {
        let names = names.clone();
        move || {
            let config = |name: &str| {
                let dir = temp_dir(name);
                let port = free_port();
                let file = dir.join("switchboard.toml");
                std::fs::write(
                    &file,
                    shipped_config_text(&dir, port) + &switchboard_tests::amqp_table(&names),
                )
                .unwrap();
                (file, port)
            };
            let (first_config, first_port) = config("ownership-first");
            let mut first = ServingBinary::start(first_config, first_port);
            let (second_config, second_port) = config("ownership-second");
            let log = second_config.with_file_name("daemon.log");
            let mut second = std::process::Command::new(switchboard_binary())
                .args(["serve", "--config"])
                .arg(&second_config)
                .stderr(std::fs::File::create(&log).unwrap())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let ready = |port: u16| curl(&[&format!("http://127.0.0.1:{port}/readyz")]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("another Switchboard daemon consumes")
            {
                assert!(
                    Instant::now() < deadline,
                    "{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let (status, readiness) = ready(second_port);
            assert_eq!(status, 503, "{readiness}");
            assert!(
                readiness.contains("not connected to the broker"),
                "{readiness}"
            );
            assert_eq!(ready(first_port).0, 200);

            // The owner goes: the second daemon takes over.
            first.child.kill().unwrap();
            first.child.wait().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while ready(second_port).0 != 200 {
                assert!(Instant::now() < deadline, "never took over");
                std::thread::sleep(Duration::from_millis(200));
            }
            second.kill().unwrap();
            second.wait().unwrap();
        }
    };
    let outcome = tokio::task::spawn_blocking(run).await;
    let channel = client.create_channel().await.unwrap();
    for queue in [
        &names.inbound_queue,
        &names.dead_letter_queue,
        &names.delivery_queue,
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    for exchange in [&names.inbound_exchange, &names.outbound_exchange] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    outcome.unwrap();
}
