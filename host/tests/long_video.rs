//! Long videos run in bounded memory under `window` and `dummy`: on a tiny model (df-tiny's
//! first one or two layers, a 4×4 latent = 4 tokens per frame) a 240-frame run's KV cache stops
//! growing after warm-up, every head attends exactly the frames its group keeps, and the
//! accounting of `dummy::kv_footprint` equals the bytes the cache really allocates.

use dfrt::api::SessionOptions;
use dfrt::backend::Precision;
use dfrt::dummy::Group;
use dfrt::pipeline::{Noise, Rng};
use dfrt::policy::Policy;
use dfrt::run::ModelSource;
use dfrt::ModelConfig;

mod common;
use common::golden;

/// df-tiny's first `layers` layers, opened as every run opens a model.
fn tiny_model(layers: usize) -> ModelSource {
    let cfg = ModelConfig { num_layers: layers, ..ModelConfig::preset("tiny4").unwrap() };
    ModelSource::with_config(golden().join("df-tiny/weights.safetensors"), cfg).unwrap()
}

/// Runs `frames` latent frames and returns `KvCache::bytes()` after every chunk; checks the
/// frames each head holds after every chunk, and the accounting, as it goes.
fn run(policy: &str, layers: usize, frames: usize, seed: u64) -> Vec<usize> {
    let source = tiny_model(layers);
    let cfg = source.cfg.clone();
    let mut rng = Rng::new(seed + 100);
    let ctx = rng.normals(5 * cfg.text_dim);
    let mut opts = SessionOptions::parse(policy, 4, 4, Some(frames), &cfg).unwrap();
    opts.seed = seed;
    let policy = opts.policy.clone();
    let mut s = source.cpu_model(Precision::F32).unwrap().session(&opts, &ctx, 5, Noise::seeded(seed)).unwrap();
    let mut bytes = Vec::new();
    while !s.done() {
        let c = s.chunk_index();
        let x = s.next_chunk(&mut |_| {}).unwrap();
        assert!(x.iter().all(|v| v.is_finite()), "{}: non-finite latents in chunk {c}", policy.name());
        let newest = 3 * c + 2;
        let window = |n: usize| -> Vec<usize> { (newest + 1 - n.min(newest)..=newest).collect() };
        for l in 0..cfg.num_layers {
            for h in 0..cfg.num_heads {
                let got = s.cache().head_frames(l, h);
                let want: Vec<usize> = match &policy {
                    Policy::Window { window: w, sink } => {
                        let ring = w - sink - 3;
                        let sinks: Vec<usize> = (0..(*sink).min(newest + 1)).collect();
                        let rest: Vec<usize> = (sinks.len()..=newest).collect();
                        sinks.into_iter().chain(rest[rest.len().saturating_sub(ring)..].iter().copied()).collect()
                    }
                    Policy::Dummy(spec) if c < spec.ar_start => {
                        std::iter::once(0).chain(window(spec.local_frames())).collect()
                    }
                    Policy::Dummy(spec) => match s.dummy().unwrap().assignment().unwrap().get(l, h) {
                        Group::Sink => vec![0],
                        Group::Neighbor => window(spec.local_frames()),
                        Group::Dummy if spec.packing => vec![newest],
                        Group::Dummy => vec![],
                    },
                    Policy::Full => (0..=newest).collect(),
                };
                assert_eq!(got, want, "{} chunk {c} layer {l} head {h}", policy.name());
            }
        }
        let foot = s.kv_footprint().unwrap();
        if matches!(policy, Policy::Dummy(_) | Policy::Full) {
            assert_eq!(
                foot.total_bytes,
                s.cache().bytes() as u64,
                "{} chunk {c}: accounting vs allocation ({})",
                policy.name(),
                foot.summary()
            );
        }
        bytes.push(s.cache().bytes());
    }
    bytes
}

fn assert_bounded(name: &str, bytes: &[usize], warm: usize) {
    let top = bytes[warm];
    assert!(top > 0);
    if let Some((c, b)) = bytes.iter().enumerate().skip(warm).find(|(_, &b)| b != top) {
        panic!("{name}: cache bytes {b} after chunk {c}, {top} after warm-up chunk {warm}");
    }
    assert!(bytes[..warm].iter().all(|&b| b <= bytes.iter().copied().max().unwrap()));
    println!(
        "{name}: {} chunks, cache {} bytes from chunk {warm} on (max {})",
        bytes.len(),
        top,
        bytes.iter().max().unwrap()
    );
}

#[test]
fn window_240_frames_bounded() {
    let b = run("window:9,sink:1", 1, 240, 1);
    assert_eq!(b.len(), 80);
    // sink 1 + ring 5 frames from chunk 1 on; 1 layer × 2 heads × 4 tokens × 128 × 4 B × K,V.
    assert_bounded("window:9,sink:1", &b, 1);
    assert_eq!(b[79], 6 * 2 * 4 * 128 * 4 * 2);
}

#[test]
fn dummy_240_frames_bounded() {
    let b = run("dummy:1", 1, 240, 2);
    // HMA runs at the end of chunk 1 (AR step 1): from then on the cache is smaller than the
    // phase-1 cache of chunk 0 (3 frames per head) and stays put.
    assert_bounded("dummy:1", &b, 1);
    assert!(b[1] < b[0], "HMA shrinks the cache: {} → {}", b[0], b[1]);
}

#[test]
fn dummy_variants_bounded() {
    let b = run("dummy:1,chunks:2,ar-start:2,packing:off", 2, 60, 3);
    assert_bounded("dummy:1,chunks:2,ar-start:2,packing:off", &b, 4);
    let b = run("dummy:3,chunks:2", 2, 36, 4);
    assert_bounded("dummy:3,chunks:2", &b, 3);
}

#[test]
fn full_grows_and_matches_its_accounting() {
    let b = run("full", 2, 12, 5);
    assert!(b.windows(2).all(|w| w[1] > w[0]));
}
