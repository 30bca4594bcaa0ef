//! Plugin benchmark, the wasm-to-native ratio (issue 3) on a noisy machine: each plugin's
//! decode through the host and the same mapping code natively, alternating in short rounds,
//! so that whatever the machine does during a round it does to both. On the shared 2-core
//! VMs, separate measurements of the two (`plugins.rs`) moved a plugin's ratio by a factor of
//! up to 2 from one run to the next. One JSON line per plugin: medians over the rounds of the
//! per-call times and of the rounds' ratios, with the ratios' quartiles.
//!
//! Run: `cargo bench -p switchboard-tests --bench plugin_ratio`.
//!
//! Counting instructions instead (the VM's speed swings; callgrind's counts do not): with
//! `PLUGIN_RATIO_PROFILE=<plugin>:<wasm|native>:<calls>` the benchmark only makes that many
//! decodes of one plugin on one side, compiling through a cache in the temporary directory so
//! that a second run under valgrind does not compile. Run it once, then
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='switchboard::plugin::Plugin::decode'`
//! (wasm, the host included) or `--toggle-collect='whatsapp_cloud::decode*'` (native) and
//! divide the collected count by the calls; `SWITCHBOARD_WASM_PERFMAP=1` names the plugins'
//! functions (`/tmp/perf-<pid>.map`, from a plugin built unstripped).

use std::hint::black_box;
use std::io::Write as _;
use std::time::Instant;

use switchboard::plugin::PluginHost;

#[path = "common/cases.rs"]
mod cases;

/// Rounds per plugin (odd: the median is one of them).
const ROUNDS: usize = 61;
/// Decodes per side per round: a few milliseconds, short against the machine's swings.
const CALLS_PER_ROUND: u32 = 1_000;

fn main() {
    if let Ok(profile) = std::env::var("PLUGIN_RATIO_PROFILE") {
        return profile_one(&profile);
    }
    let host = PluginHost::new(64 << 20, None).expect("the plugin host starts");
    let mut out = std::io::stdout().lock();
    for case in cases::cases() {
        let plugin = case.load(&host);
        let native_request = cases::native_request(&case.request);
        let wasm = || {
            timed(|| {
                black_box(plugin.decode(black_box(&case.request)).unwrap().len());
            })
        };
        let native = || {
            timed(|| {
                black_box((case.native)(black_box(&native_request)));
            })
        };
        // Warm both (instances, caches, branch predictors) before measuring.
        wasm();
        native();
        let mut wasm_ns = Vec::with_capacity(ROUNDS);
        let mut native_ns = Vec::with_capacity(ROUNDS);
        let mut ratios = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            // Alternate which side goes first, so neither always runs in the other's wake.
            let (w, n) = if round % 2 == 0 {
                let w = wasm();
                (w, native())
            } else {
                let n = native();
                (wasm(), n)
            };
            wasm_ns.push(w);
            native_ns.push(n);
            ratios.push(w / n);
        }
        ratios.sort_by(f64::total_cmp);
        let line = serde_json::json!({
            "plugin": case.id,
            "payload_bytes": case.request.body.len(),
            "rounds": ROUNDS,
            "calls_per_round": CALLS_PER_ROUND,
            "wasm_ns": median(&mut wasm_ns).round(),
            "native_ns": median(&mut native_ns).round(),
            "ratio": round2(median(&mut ratios)),
            "ratio_p25": round2(quantile(&ratios, 0.25)),
            "ratio_p75": round2(quantile(&ratios, 0.75)),
            "wasm_decodes_per_second": (1e9 / median(&mut wasm_ns)).round(),
        });
        writeln!(out, "{line}").expect("stdout is writable");
    }
}

/// `<plugin>:<wasm|native>:<calls>`: only those decodes, for a profiler to count.
fn profile_one(profile: &str) {
    let usage = "PLUGIN_RATIO_PROFILE=<plugin>:<wasm|native>:<calls>";
    let mut parts = profile.split(':');
    let (Some(id), Some(side), Some(calls)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{usage}");
    };
    let calls: u32 = calls.parse().expect(usage);
    let case = cases::cases()
        .into_iter()
        .find(|case| case.id == id)
        .unwrap_or_else(|| panic!("no plugin case `{id}`"));
    let cache = std::env::temp_dir().join("switchboard-plugin-ratio-cache");
    let host = PluginHost::new(64 << 20, Some(cache)).expect("the plugin host starts");
    let plugin = case.load(&host);
    let native_request = cases::native_request(&case.request);
    let started = Instant::now();
    match side {
        "wasm" => (0..calls).for_each(|_| {
            black_box(plugin.decode(black_box(&case.request)).unwrap().len());
        }),
        "native" => (0..calls).for_each(|_| {
            black_box((case.native)(black_box(&native_request)));
        }),
        _ => panic!("{usage}"),
    }
    let line = serde_json::json!({
        "plugin": id,
        "side": side,
        "calls": calls,
        "ns_per_call": (started.elapsed().as_nanos() as f64 / f64::from(calls)).round(),
    });
    writeln!(std::io::stdout().lock(), "{line}").expect("stdout is writable");
}

/// Nanoseconds per call over one round.
fn timed(mut call: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..CALLS_PER_ROUND {
        call();
    }
    started.elapsed().as_nanos() as f64 / f64::from(CALLS_PER_ROUND)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `q` quantile of values sorted in ascending order.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}
