//! Shared helpers for the end-to-end tests in `tests/tests/`: where the plugins built by
//! `tests/build.rs` are, a plugin host to load them with, and the provider emulators
//! ([`emulators`]) deliveries are tested against.

pub mod emulators;

use std::path::PathBuf;
use std::time::Duration;

use switchboard::plugin::{Plugin, PluginHost, PluginSettings};

/// A fresh directory under the system's temporary directory, unique to this process and call
/// (a counter, not only the clock: two test threads can read the same nanosecond).
pub fn temp_dir(prefix: &str) -> PathBuf {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-{prefix}-{}-{call}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("a writable temporary directory");
    dir
}

/// The directory of the components built by `tests/build.rs`.
pub fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("SWITCHBOARD_TEST_PLUGINS"))
}

/// A built component by crate name (`sms-twilio` -> `sms_twilio.wasm`).
pub fn component(name: &str) -> PathBuf {
    plugins_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// A host with a compile cache in a fresh temporary directory.
pub fn host() -> PluginHost {
    PluginHost::new(64 << 20, None).expect("the plugin host starts")
}

/// Loads a plugin with its settings (TOML text) and the default limits.
pub fn load(host: &PluginHost, id: &str, settings: &str) -> Plugin {
    try_load(host, id, settings).unwrap_or_else(|error| panic!("{error}"))
}

pub fn try_load(
    host: &PluginHost,
    id: &str,
    settings: &str,
) -> Result<Plugin, switchboard::plugin::LoadError> {
    try_load_with_time_limit(host, id, settings, Duration::from_millis(100))
}

/// Loads a plugin with a time budget per call of its own: for tests whose point is not the
/// budget but whose inputs are large enough to approach the default one on a busy machine.
pub fn load_with_time_limit(
    host: &PluginHost,
    id: &str,
    settings: &str,
    time_limit: Duration,
) -> Plugin {
    try_load_with_time_limit(host, id, settings, time_limit)
        .unwrap_or_else(|error| panic!("{error}"))
}

fn try_load_with_time_limit(
    host: &PluginHost,
    id: &str,
    settings: &str,
    time_limit: Duration,
) -> Result<Plugin, switchboard::plugin::LoadError> {
    host.load(PluginSettings {
        id: id.to_owned(),
        file: component(id),
        memory_limit: 64 << 20,
        time_limit,
        settings: settings.to_owned(),
        secrets: Default::default(),
        public_url: None,
    })
}

/// A provider payload from `tests/fixtures/<provider>/<name>`.
pub fn fixture(provider: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(provider)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The broker the tests use (`SWITCHBOARD_TEST_AMQP_URL`, default the local RabbitMQ).
pub fn amqp_url() -> String {
    std::env::var("SWITCHBOARD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Whether broker tests must run: `SWITCHBOARD_REQUIRE_AMQP=1` (CI) turns a missing broker
/// into a failure instead of a loud skip.
pub fn amqp_required() -> bool {
    std::env::var("SWITCHBOARD_REQUIRE_AMQP").is_ok_and(|value| value == "1")
}

/// Topology names of this test run only, so no run sees another's leftovers.
pub fn amqp_names(test: &str) -> switchboard::config::AmqpConfig {
    let run = format!(
        "{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or(0)
    );
    switchboard::config::AmqpConfig {
        url: switchboard::config::Secret::new(amqp_url()),
        inbound_exchange: format!("test.{run}.inbound"),
        inbound_queue: format!("test.{run}.inbound"),
        dead_letter_queue: format!("test.{run}.dead"),
        outbound_exchange: format!("test.{run}.outbound"),
        delivery_queue: format!("test.{run}.delivery"),
        prefetch: 300,
        delivery_limit: 5,
    }
}

/// `names` as the `[amqp]` table of a configuration file.
pub fn amqp_table(names: &switchboard::config::AmqpConfig) -> String {
    format!(
        "\n[amqp]\nurl = \"{}\"\ninbound_exchange = \"{}\"\ninbound_queue = \"{}\"\ndead_letter_queue = \"{}\"\noutbound_exchange = \"{}\"\ndelivery_queue = \"{}\"\n",
        amqp_url(),
        names.inbound_exchange,
        names.inbound_queue,
        names.dead_letter_queue,
        names.outbound_exchange,
        names.delivery_queue
    )
}

/// A plain AMQP client, as a provider gateway or a subscriber would use; `None` after a loud
/// skip when no broker answers, and a failure instead with `SWITCHBOARD_REQUIRE_AMQP=1`.
#[allow(clippy::print_stderr)]
pub async fn broker_client() -> Option<lapin::Connection> {
    match lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await {
        Ok(connection) => Some(connection),
        Err(error) if amqp_required() => {
            panic!("SWITCHBOARD_REQUIRE_AMQP=1 but no broker answers: {error}")
        }
        Err(error) => {
            eprintln!(
                "SKIPPED: no RabbitMQ at the test URL ({error}); set SWITCHBOARD_REQUIRE_AMQP=1 to fail instead"
            );
            None
        }
    }
}

/// How long a subscriber queue lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Gone with the test's connection.
    Exclusive,
    /// Outlives the test's connection (tests that force connections closed).
    Durable,
}

/// A queue `<outbound exchange>.subscriber` bound to every `conversation.#` notification, as a
/// frontend's subscriber would declare it; returns its name.
pub async fn subscribe(
    channel: &lapin::Channel,
    names: &switchboard::config::AmqpConfig,
    lifetime: Lifetime,
) -> String {
    let subscriber = format!("{}.subscriber", names.outbound_exchange);
    let options = match lifetime {
        Lifetime::Exclusive => lapin::options::QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        Lifetime::Durable => lapin::options::QueueDeclareOptions::durable(),
    };
    channel
        .queue_declare(
            subscriber.as_str().into(),
            options,
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            subscriber.as_str().into(),
            names.outbound_exchange.as_str().into(),
            "conversation.#".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    subscriber
}

/// The `switchboard` binary `cargo test --workspace` built next to the test binaries.
pub fn switchboard_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let binary = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps")
        .join("switchboard");
    assert!(
        binary.exists(),
        "{} is missing: run with `cargo test --workspace`",
        binary.display()
    );
    binary
}

/// A port nobody listens on right now (for a daemon the test talks to over HTTP).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The shipped `config/switchboard.toml` with the test-built plugins, a store under `dir` and
/// the API on `port`, as text (tests add their own sections); its webhook door on a free port.
pub fn shipped_config_text(dir: &std::path::Path, port: u16) -> String {
    shipped_config_with_door(dir, port, free_port())
}

/// [`shipped_config_text`] with the webhook door on `door_port`.
pub fn shipped_config_with_door(dir: &std::path::Path, port: u16, door_port: u16) -> String {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/switchboard.toml"
    ))
    .expect("the shipped configuration");
    let text = shipped
        .replace(
            "../target/plugins/wasm32-wasip2/plugin/",
            &format!("{}/", plugins_dir().display()),
        )
        .replace(
            "path = \"./data\"",
            &format!("path = \"{}\"", dir.join("data").display()),
        )
        .replace(
            "webhook_listen = \"127.0.0.1:8081\"",
            &format!("webhook_listen = \"127.0.0.1:{door_port}\""),
        )
        .replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains(&dir.display().to_string()),
        "the shipped config changed shape"
    );
    text
}

/// A text header of an AMQP message.
pub fn amqp_header(properties: &lapin::BasicProperties, name: &str) -> Option<String> {
    properties.headers().as_ref().and_then(|table| {
        table
            .inner()
            .iter()
            .find(|(key, _)| key.as_str() == name)
            .and_then(|(_, value)| match value {
                lapin::types::AMQPValue::LongString(text) => Some(text.to_string()),
                _ => None,
            })
    })
}

/// One admin API call on `port` with a JSON body: the status and the answer as JSON (null
/// when it is not JSON).
pub fn call(
    port: u16,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let (status, text) = curl(&[
        "-X",
        method,
        &format!("http://127.0.0.1:{port}{path}"),
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
    ]);
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// `curl` as a provider or an operator would run it: the status and the body.
pub fn curl(args: &[&str]) -> (u16, String) {
    let output = std::process::Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed");
    let text = String::from_utf8(output.stdout).expect("curl prints text");
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
    (status.parse().unwrap_or(0), body.to_owned())
}

/// A secret as it could leak: as written, in hex, percent-encoded, and in base64 at each of
/// the three alignments it can take inside a longer value (Basic auth encodes `user:secret`;
/// only the characters that encode the secret's own bytes are kept).
pub fn secret_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let hex: String = secret.bytes().map(|byte| format!("{byte:02x}")).collect();
    let mut forms = vec![secret.to_owned(), hex];
    for pad in 0..3 {
        let padded = format!("{}{secret}", "x".repeat(pad));
        let encoded = base64::engine::general_purpose::STANDARD.encode(padded.as_bytes());
        let skip = (pad * 4).div_ceil(3) + 1;
        let keep = encoded.len().saturating_sub(skip + 4);
        forms.push(encoded[skip..skip + keep].to_owned());
    }
    forms.push(secret.bytes().map(|byte| format!("%{byte:02X}")).collect());
    forms
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// `bytes`, a file of the embedded store, followed by every compressed value found in it,
/// expanded: the store writes its JSON compressed with LZ4 (the byte 0x01, the JSON's length
/// and the block's, each u32 little endian, then the block), which would hide text from a
/// search of the raw files. Read here from that description, not with the daemon's code.
pub fn with_stored_values_expanded(bytes: &[u8]) -> Vec<u8> {
    const LARGEST: usize = 64 << 20;
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(offset) = bytes[at..].iter().position(|&byte| byte == 0x01) {
        let start = at + offset;
        at = start + 1;
        let Some(header) = bytes.get(start + 1..start + 9) else {
            break;
        };
        let json_len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let block_len = u32::from_le_bytes(header[4..].try_into().unwrap()) as usize;
        // LZ4 expands a block at most 255 times.
        if block_len == 0 || json_len <= block_len || json_len > LARGEST.min(block_len * 255) {
            continue;
        }
        let Some(block) = bytes.get(start + 9..start + 9 + block_len) else {
            continue;
        };
        let mut json = vec![0; json_len];
        if lz4_flex::block::decompress_into(block, &mut json)
            .is_ok_and(|written| written == json_len)
        {
            out.extend_from_slice(&json);
            at = start + 9 + block_len;
        }
    }
    out
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(files_under(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// The `switchboard` binary serving `config` (its admin API on `port`), killed when dropped;
/// its log (at `info`) goes to `log`.
#[derive(Debug)]
pub struct ServingBinary {
    pub child: std::process::Child,
    pub port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Drop for ServingBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServingBinary {
    /// Starts `switchboard serve --config <config>` and waits until `/readyz` answers 200.
    pub fn start(config: PathBuf, port: u16) -> Self {
        let log = config.with_file_name("daemon.log");
        let child = std::process::Command::new(switchboard_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).expect("the log file"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the switchboard binary");
        let mut serving = Self {
            child,
            port,
            config,
            log,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while curl(&[&format!("http://127.0.0.1:{port}/readyz")]).0 != 200 {
            assert!(
                serving.child.try_wait().expect("its status").is_none(),
                "the daemon exited: {}",
                std::fs::read_to_string(&serving.log).unwrap_or_default()
            );
            assert!(std::time::Instant::now() < deadline, "never ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        serving
    }

    /// A supervisor's token: `sub` supervising `team`.
    pub fn supervisor_token(&self, sub: &str, team: &str) -> String {
        self.token(&["--sub", sub, "--role", "supervisor", "--team", team])
    }

    /// One admin API call with a JSON body, as a frontend makes it: the status and the
    /// answer as JSON (null when it is not JSON).
    pub fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        call(self.port, token, method, path, body)
    }

    /// A token from `switchboard token` for this configuration.
    pub fn token(&self, args: &[&str]) -> String {
        let output = std::process::Command::new(switchboard_binary())
            .args(["token", "--config"])
            .arg(&self.config)
            .args(args)
            .output()
            .expect("switchboard token");
        String::from_utf8(output.stdout)
            .expect("a token")
            .trim()
            .to_owned()
    }
}

/// Runs `rabbitmqctl` (installed with the broker), failing the test when it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl is installed with the broker");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
