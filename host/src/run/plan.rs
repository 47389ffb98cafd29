//! The memory plan: how many device bytes a run needs, computed before anything is generated.
//!
//! `weights` are the checkpoint's tensors; `cache` is the KV cache at full capacity under the
//! policy (plus, for Dummy Forcing, one layer's worth for the regrouping, when old and new
//! slots coexist); `text` is the per-prompt state (embedded context and every block's
//! cross-attention K/V); `activations` bounds the live intermediates of one forward, as the
//! model itself describes them ([`crate::model::forward_scratch`],
//! [`crate::model::text_state_elems`]); `tables` are the RoPE and sinusoid tables and the
//! attention segment table. Each tensor is rounded to the heap's
//! 256-byte blocks, and the sum carries a margin for fragmentation. A test checks the estimate
//! against the measured peak.

use crate::backend::Precision;
use crate::cache::KvCache;
use crate::config::FRAMES_PER_CHUNK;
use crate::pipeline::Latent;
use crate::policy::Policy;
use crate::{Error, ModelConfig, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub weights: usize,
    pub cache: usize,
    pub text: usize,
    pub activations: usize,
    pub graphs: usize,
    pub tables: usize,
}

/// Per-tensor rounding slack (one heap block).
const BLOCK: usize = crate::gpu::heap::ALIGN;

impl MemoryPlan {
    /// The plan for `cfg` under `policy` at `latent` resolution for `frames` latent frames
    /// (None: unbounded, only for bounded policies). `weight_bytes` and `weight_tensors` describe
    /// the checkpoint in the storage precision.
    pub fn estimate(
        cfg: &ModelConfig,
        policy: &Policy,
        latent: Latent,
        frames: Option<usize>,
        precision: Precision,
        weight_bytes: usize,
        weight_tensors: usize,
    ) -> Result<Self> {
        let e = precision.size();
        let [_, ph, pw] = cfg.patch_size;
        if ph == 0 || pw == 0 || !latent.height.is_multiple_of(ph) || !latent.width.is_multiple_of(pw) {
            return Err(Error::Input(format!(
                "latent {}×{} is not a multiple of the patch {ph}×{pw}",
                latent.height, latent.width
            )));
        }
        let tpf = (latent.height / ph) * (latent.width / pw);
        let (d, heads, layers) = (cfg.dim, cfg.num_heads, cfg.num_layers);
        let hd = cfg.head_dim();
        let groups = policy.initial_groups(heads, frames)?;
        let cache_model = KvCache::<()>::new(layers, heads, hd, tpf, precision, &groups)?;
        let slots: usize =
            cache_model.layers.iter().flat_map(|l| &l.groups).map(|g| 2 * (g.sink_cap + g.ring_cap)).sum();
        let mut cache = cache_model.capacity_bytes() + slots * BLOCK;
        if matches!(policy, Policy::Dummy(_)) {
            cache += cache.div_ceil(layers.max(1));
        }
        let text = e * crate::model::text_state_elems(cfg) + (1 + 2 * layers) * BLOCK;
        let t = FRAMES_PER_CHUNK * tpf;
        let pf = cfg.patch_features().max(cfg.in_dim * ph * pw);
        let activations = e * crate::model::forward_scratch(cfg, tpf) + 64 * BLOCK;
        let tables = 1024 * hd * 4
            + cfg.freq_dim * 8
            + (64 << 10).max((heads * (frames.unwrap_or(64) + 8)).next_power_of_two() * 24)
            + 4 * BLOCK;
        // The graphs' inputs and outputs (latents, time embedding, flow) come on top of a
        // forward's scratch.
        let graphs = activations + e * (2 * t * pf + FRAMES_PER_CHUNK * 7 * d) + 8 * BLOCK;
        Ok(MemoryPlan { weights: weight_bytes + weight_tensors * BLOCK, cache, text, activations, graphs, tables })
    }

    /// Bytes beyond the weights: the arena reserved for the run (with a quarter margin for
    /// fragmentation).
    pub fn arena(&self) -> usize {
        let core = self.core();
        core + core / 4
    }

    /// The arena without its margin.
    pub fn core(&self) -> usize {
        self.cache + self.text + self.activations + self.graphs + self.tables
    }

    /// Everything: weights plus the arena.
    pub fn total(&self) -> usize {
        self.weights + self.arena()
    }

    /// Fails with "needs X bytes, Y free" when the device has less than [`MemoryPlan::total`].
    pub fn check(&self, free: usize, total: usize) -> Result<()> {
        let need = self.total();
        if need > free {
            return Err(Error::out_of_memory(need, free, format!(
                "out of device memory: the run needs {need} bytes ({:.1} MiB: weights {:.1}, KV cache {:.1}, text {:.1}, activations {:.1}, recorded graphs {:.1}, tables {:.1}, fragmentation margin {:.1}), {free} bytes free of {total}; use a smaller resolution, a bounded policy (window or dummy) or bf16",
                mib(need),
                mib(self.weights),
                mib(self.cache),
                mib(self.text),
                mib(self.activations),
                mib(self.graphs),
                mib(self.tables),
                mib(self.arena() - self.core()),
            )));
        }
        Ok(())
    }
}

fn mib(b: usize) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 14B model (Wan2.1-T2V-14B, Krea RealTime-14B) at 480p, 21 frames, bf16: the plan's
    /// terms against their formulas, and what fits an 80 GB card.
    #[test]
    fn the_14b_plan_at_480p_follows_its_formulas() {
        let cfg = ModelConfig::preset("wan-14b").unwrap();
        let latent = Latent { channels: cfg.in_dim, height: 60, width: 104 };
        let tensors = crate::names::expected_tensors(&cfg);
        let params: usize = tensors.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert!((13.5e9..15e9).contains(&(params as f64)), "14B parameters: {params}");
        let plan = |p: &str| {
            let policy = Policy::parse_for(p, &cfg).unwrap();
            MemoryPlan::estimate(&cfg, &policy, latent, Some(21), Precision::Bf16, 2 * params, tensors.len()).unwrap()
        };
        let tpf = 30 * 52; // 1560 tokens per latent frame
                           // K and V × 40 layers × 5120 (40 heads × 128) × tokens × frames × 2 bytes, plus one heap
                           // block per slot tensor.
        let kv = |frames: usize| 2 * 40 * 5120 * tpf * frames * 2;
        let full = plan("full");
        let slots = 40 * 2 * 21;
        assert_eq!(full.cache, kv(21) + slots * BLOCK, "full: every frame of 21");
        // window:12,sink:3 holds 3 sink + 6 ring frames (the current chunk is the forward's own).
        let window = plan("window:12,sink:3");
        assert_eq!(window.cache, kv(9) + 40 * 2 * 9 * BLOCK);
        // dummy (L = 1 chunk): before calibration one group of 1 sink + 3·L ring frames, plus
        // one layer's worth for the regrouping.
        let dummy = plan("dummy:800");
        let one = kv(4) + 40 * 2 * 4 * BLOCK;
        assert_eq!(dummy.cache, one + one.div_ceil(40));
        assert_eq!(full.weights, 2 * params + tensors.len() * BLOCK);
        // The text state: the embedded context and every block's cross-attention K/V (bf16).
        assert_eq!(full.text, 2 * crate::model::text_state_elems(&cfg) + (1 + 2 * 40) * BLOCK);
        assert!(crate::model::text_state_elems(&cfg) >= 512 * 5120 * (1 + 2 * 40));
        // bf16 14B fits an 80 GB H100 under every policy at 480p / 21 frames.
        for (p, m) in [("full", full), ("window", window), ("dummy", dummy)] {
            assert!(m.total() < 80 << 30, "{p}: {:.1} GiB", m.total() as f64 / (1u64 << 30) as f64);
            assert!(m.activations > 0 && m.graphs > m.activations && m.tables > 0, "{p}: {m:?}");
        }
        assert!(window.cache < full.cache && dummy.cache < window.cache);
    }
}
