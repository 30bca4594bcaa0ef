//! Plugin benchmark (issue 3): decode throughput of each bundled plugin on its typical
//! payload through the wasm host, and the same mapping code compiled natively, in one run;
//! plus a plugin's cold start from the precompiled cache.
//!
//! Run: `cargo bench -p switchboard-tests --bench plugins`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard::plugin::{PluginHost, PluginSettings};
use switchboard_tests::component;

#[path = "common/cases.rs"]
mod cases;
use cases::{SHA256_HEX, cases, native_request, request};

/// The fixed cost of a call through the host, with a gateway's dozen request headers: a plugin
/// that returns at once having declared that it reads no header, and one built before plugins
/// declared their headers (passed all of them; it echoes their names in one event).
fn call_overhead(c: &mut Criterion) {
    let host = PluginHost::new(64 << 20, None).unwrap();
    let webhook = request(
        "https://switchboard.example.com/v1/inbound/x",
        "text/plain",
        b"ok".to_vec(),
        &[("x-hub-signature-256", SHA256_HEX)],
    );
    for (plugin, name) in [
        (
            "hostile-trap",
            "decode returning no events, no header declared",
        ),
        (
            "legacy-echo",
            "decode returning one event, every header passed",
        ),
    ] {
        let plugin = host
            .load(PluginSettings {
                id: plugin.to_owned(),
                file: component(plugin),
                memory_limit: 64 << 20,
                time_limit: Duration::from_millis(100),
                settings: String::new(),
                secrets: Default::default(),
                public_url: None,
            })
            .unwrap();
        c.bench_function(&format!("call_overhead/{name}"), |b| {
            b.iter(|| black_box(plugin.decode(black_box(&webhook)).unwrap().len()))
        });
    }
}

fn decode(c: &mut Criterion) {
    let host = PluginHost::new(64 << 20, None).unwrap();
    for case in cases() {
        let plugin = case.load(&host);
        let mut group = c.benchmark_group(format!("decode/{}", case.id));
        group.throughput(Throughput::Elements(1));
        group.measurement_time(Duration::from_secs(5));
        group.bench_function(format!("wasm ({} bytes)", case.request.body.len()), |b| {
            b.iter(|| black_box(plugin.decode(black_box(&case.request)).unwrap().len()))
        });
        let native = native_request(&case.request);
        group.bench_function("native", |b| {
            b.iter(|| black_box((case.native)(black_box(&native))))
        });
        group.finish();
    }
}

fn cold_start(c: &mut Criterion) {
    let cache =
        std::env::temp_dir().join(format!("switchboard-bench-cache-{}", std::process::id()));
    let host = PluginHost::new(64 << 20, Some(cache.clone())).unwrap();
    let settings = PluginSettings {
        id: "whatsapp-cloud".to_owned(),
        file: component("whatsapp-cloud"),
        memory_limit: 64 << 20,
        time_limit: Duration::from_millis(100),
        settings: "phone_number_id = \"106540352242922\"\n".to_owned(),
        secrets: Default::default(),
        public_url: None,
    };
    // Fill the cache once; every measured load reads the precompiled component back.
    host.load(settings.clone()).unwrap();
    c.bench_function(
        "cold_start/whatsapp-cloud (precompiled cache: load, instantiate, describe, configure)",
        |b| {
            b.iter(|| {
                let plugin = host.load(settings.clone()).unwrap();
                assert!(plugin.loaded_from_cache());
                black_box(plugin)
            })
        },
    );
    let _ = std::fs::remove_dir_all(cache);
}

criterion_group!(benches, call_overhead, decode, cold_start);
criterion_main!(benches);
