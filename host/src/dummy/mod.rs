//! Dummy Forcing (arXiv 2601.20499, official code csguoh/DummyForcing @ 28128ed): policy
//! spec, calibration statistic, dynamic head programming (DHP), head programs, the per-group
//! cache layout after heterogeneous memory allocation (HMA), and KV-cache accounting.
//!
//! Everything but [`run`] is pure (no model, no cache); [`run::DummyForcing`] wires it into a
//! session as described below. Semantics: `shared/notes/dummy-forcing.md` §1.2–1.7 and the
//! df-tiny section of `shared/golden/README.md`.
//!
//! # Parts
//! - [`crate::policy::dummy_spec`]: [`DummySpec`], the `dummy:N[,chunks:L][,ar-start:K][,packing:on|off]` string.
//! - [`calibrate`]: [`layer_masses`] (official `online_head_classification`) and the query-row
//!   sampler [`sample_rows`].
//! - [`dhp`]: [`program()`] (official `dynamic_head_programming`) → [`Assignment`] of [`Group`]s.
//! - [`heads`]: [`HeadProgram`] JSON (`--save-heads`, `--heads`) and [`stability`]
//!   (`dfrt calibrate`).
//! - [`layout`]: [`phase1_shape`] and [`hma_layout`], slot shapes of each head group.
//! - [`crate::policy::footprint`]: [`kv_footprint`], KV bytes per group and against `full`.
//! - [`run`]: [`DummyForcing`], the per-video state that runs calibration, DHP and HMA inside
//!   a [`crate::pipeline::Session`], over the [`crate::backend::Backend`] trait only.
//!
//! # How it is wired in
//!
//! - Policy: [`crate::policy::Policy::Dummy`]`(`[`DummySpec`]`)`, parsed by
//!   [`crate::policy::Policy::parse`] (`dummy:…`) and checked against the model by
//!   [`crate::policy::Policy::validate`] / `parse_for` (also done by `Session::new`). Its
//!   initial cache groups are the phase-1 shape below.
//! - Session: under `dummy`, `Session::new` creates a [`DummyForcing`] and passes it to every
//!   forward as the [`crate::model::ForwardHook`] (a hook set with `Session::set_hook` is then
//!   not called). Before the run, `Session::dummy_mut()` takes the row seed
//!   ([`DummyForcing::set_seed`]), stored rows ([`DummyForcing::set_sampled_rows`]) and a
//!   reused program ([`DummyForcing::set_program`], which skips calibration). Afterwards
//!   `Session::dummy()` gives the program, the [`Assignment`] and the calibration masses, and
//!   `Session::kv_footprint()` the accounting, which equals `KvCache::bytes()` for `dummy`
//!   and `full` (tested in `host/tests/long_video.rs`).
//! - Calibration ([`crate::model::ForwardHook::on_self_attention`], t = 0 pass of AR step K,
//!   every layer, before the commit): each head's context segments are gathered (each
//!   tensor downloaded once) into one `[heads, n, d]` key block, then [`layer_masses`].
//! - DHP + HMA ([`crate::model::ForwardHook::after_forward`] of the same pass):
//!   [`HeadProgram::from_calibration`] (or the given program), then per layer
//!   [`hma_layout`] → [`crate::cache::GroupSpec`]s (empty groups skipped) →
//!   [`crate::cache::KvCache::replace_groups`].
//! - Phase 2 needs no code of its own: [`crate::cache::KvCache::context`] gives each head its
//!   group's slots ++ the current chunk, and the attention op takes per-head segment lists, so
//!   a layer with sink, neighbor and dummy heads runs in one attention call with no gather or
//!   scatter; outputs stay at their head positions. Commits go to every group's ring.
//! - CLI: `dfrt generate --policy dummy:… [--heads FILE] [--save-heads FILE]` writes
//!   `assignment` and the `dfrt.kv_bytes.*` / `dfrt.kv_ratio_vs_full` metadata (plus
//!   `dfrt.kv_bytes.allocated`); `dfrt calibrate` runs several contexts (× seeds) up to AR
//!   step K and reports [`stability`].
//!
//! # Semantics, step by step
//!
//! Terms: chunk `c` holds latent frames `3c..3c+3`; its AR step is `c` (`frame // 3`, the
//! official hard-coded 3). `HW` = tokens per latent frame, `T = 3·HW` tokens per chunk,
//! `L` = `spec.chunks`, `K` = `spec.ar_start`. Each chunk runs 4 denoising passes, then the
//! t = 0 pass on its final x0. **Only the t = 0 pass commits frames to the cache**; the
//! denoising passes attend `cache ++ current chunk` and store nothing. Keys are cached after
//! RoPE with the absolute frame index and are never re-roped. No attention masks.
//! [`phase`] tells which of the three cases below an AR step is in.
//!
//! ## 1. Phase 1: AR steps `c ≤ K` (the official "full path")
//! Every head of a layer is in one group with [`phase1_shape`]: 1 sink slot + a ring of
//! `3·L` frame slots. A head attends `sink ++ ring ++ current chunk` (chunk 0: the current
//! chunk only). The t = 0 pass commits the chunk's 3 frames, sinks first (frame 0 goes to the
//! sink in chunk 0), then the ring (oldest evicted). This equals the official update
//! `sink = K_all[:HW]`, `local = K_all[-3·HW·L:] if c > L−1 else K_all[HW:]`: after step c the
//! ring holds [`local_frames_after_step`]`(c)` frames.
//!
//! ## 2. Calibration: the t = 0 pass of AR step `K`, in every layer
//! Skipped when a program is given with `--heads FILE` (then go straight to HMA below).
//! - Rows: `sampled_rows.{layer}` from `--inputs` if present ([`calibrate::rows_from_i64`]);
//!   otherwise [`sample_rows`]`(T, K, &mut rng)` with one [`SplitMix64`] per video, seeded
//!   from the run seed (`--seed`, also with `--inputs`), called for layers 0, 1, … in order. `T/3/3` rows when K = 1
//!   (520 at 480p), `T/3` otherwise.
//! - Call [`layer_masses`]`(q, T, heads, head_dim, &rows, &keys, K)` with this pass's RoPE'd
//!   queries `q [T, heads, head_dim]` and the FULL key set, **before this pass commits**:
//!   `keys = [sink slot (frame 0), ring slots oldest → newest, current chunk's K]`, each a
//!   [`KeySegment`] (e.g. [`KeySegment::thd`] on a `[HW, heads, d]` frame slot). The regions
//!   are index ranges of that concatenation: first = `[0, HWr)` with `HWr = T/3` if K = 1
//!   else `T`; mid = `[HWr, n−T)`; last = `[n−T, n)`. With K = 1 and L = 1 that is frame 0 |
//!   frames 1–2 | frames 3–5. With K ≥ 2 "first" spans three frames (frame 0 and the two
//!   oldest ring frames), an official quirk we keep. Note that the commit of this same pass
//!   then drops frames 1–2 from the ring (L = 1): the masses see them, HMA does not.
//! - Keep the `[3][heads]` result of every layer; the attention output of this pass is
//!   the ordinary phase-1 attention (calibration does not change it). The golden test
//!   (`tests/golden.rs`, df-tiny) checks these masses against `scores.{layer}` (atol 1e-5).
//!
//! ## 3. DHP + HMA: at the end of that same t = 0 forward (after the last block)
//! - `let a = program(&scores, spec.num_dummy)?` (or `program.assignment()` from `--heads`,
//!   after [`HeadProgram::load_for`] and [`HeadProgram::check_spec`]);
//!   `--save-heads FILE`: [`HeadProgram::from_calibration`] + [`HeadProgram::save`].
//! - Per layer, rebuild the cache as [`hma_layout`]`(&a, &spec)` says, copying from the
//!   phase-1 cache as it is **after** this pass's commit:
//!   - sink heads ← frame 0 (the phase-1 sink slot) into 1 sink slot, ring 0;
//!   - dummy heads ← the LAST frame of the phase-1 ring (the last frame of chunk K) into a
//!     ring of 1; with packing off, nothing (ring 0);
//!   - neighbor heads ← the whole phase-1 ring, oldest first, into a ring of `3·L`.
//!
//!   Head lists are ascending; a group may be empty in a layer (skip it everywhere).
//! - Output: `assignment` `[layers, heads]` int64 = [`Assignment::to_i64`].
//!
//! ## 4. Phase 2: AR steps `c > K` (the official packed path)
//! Each group attends `its slots ++ the current chunk's K/V of its heads`; the outputs go
//! back to their original head positions before the output projection:
//! sink heads see frame 0 + chunk; dummy heads see frame `3c−1` + chunk (only the chunk
//! with packing off); neighbor heads see the last `3·L` frames + chunk. The t = 0 pass
//! commits the chunk to every group's ring: dummy rings (cap 1) keep the chunk's last
//! frame, neighbor rings (cap 3·L) slide by one chunk, sink groups (sink full, ring 0) keep
//! frame 0 forever. The official code runs sink and dummy heads as one packed call (both
//! have `HW + T` keys); per-head attention is independent, so separate calls give the same
//! numbers; here all of a layer's heads run in one call over their own segment lists.
//!
//! ## 5. Reporting
//! [`kv_footprint`] with the `dummy` policy and `Some(a.counts())` (or `None` if the run
//! ends before step K) gives bytes per group, the ratio against `full` at
//! the same frame count, a summary line and output metadata (`Session::kv_footprint`).

pub mod calibrate;
pub mod dhp;
pub mod heads;
pub mod layout;
pub mod run;

pub use crate::policy::DummySpec;
pub use crate::policy::{kv_footprint, GroupBytes, KvFootprint};
pub use crate::policy::{local_frames_after_step, phase1_shape, SlotShape};
pub use calibrate::{layer_masses, sample_rows, KeySegment, LayerScores, SplitMix64};
pub use dhp::{program, Assignment, Group, GroupCounts};
pub use heads::{stability, HeadEntry, HeadProgram, ModelIdentity, Stability};
pub use layout::{hma_layout, GroupLayout, HmaSource};
pub use run::DummyForcing;

/// What an AR step does under the dummy policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// `c < K`: phase-1 cache, every head the same.
    Full,
    /// `c == K`: phase-1 attention; its t = 0 pass also calibrates (unless a program is
    /// given) and ends with DHP + HMA.
    Calibrate,
    /// `c > K`: per-group caches.
    Packed,
}

/// The phase of AR step `ar_step` (= chunk index).
pub fn phase(ar_step: usize, spec: &DummySpec) -> Phase {
    match ar_step.cmp(&spec.ar_start) {
        std::cmp::Ordering::Less => Phase::Full,
        std::cmp::Ordering::Equal => Phase::Calibrate,
        std::cmp::Ordering::Greater => Phase::Packed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases() {
        let s = DummySpec::parse("dummy:1,ar-start:2").unwrap();
        let got: Vec<Phase> = (0..4).map(|c| phase(c, &s)).collect();
        assert_eq!(got, vec![Phase::Full, Phase::Full, Phase::Calibrate, Phase::Packed]);
    }
}
