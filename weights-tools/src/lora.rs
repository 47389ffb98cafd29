//! Merging a PEFT LoRA into the DiT's Linear weights while converting (`convert --lora`).
//!
//! LongLive ships a base checkpoint and a LoRA (rank 256, alpha 256) on the Linear layers of
//! every block; its code loads the LoRA with peft and calls `merge_and_unload`. This does the
//! same merge offline, so the runtime only ever sees plain weights: for each adapted Linear
//! with weight `W [out, in]`, `lora_A.weight` `A [r, in]` and `lora_B.weight` `B [out, r]`,
//!
//! `W' = W + s · (B @ A)`, with `s = alpha / r` (peft's scaling),
//!
//! accumulated in f64 and stored in the checkpoint's dtype. Biases are unchanged (a peft LoRA
//! has none). `alpha` defaults to `r` (scaling 1, LongLive's 256/256), because a PEFT state
//! dict does not store it.
//!
//! Key names: `[group.][base_model.model.|transformer.|diffusion_model.|model.]<module>.lora_A[.<adapter>].weight`,
//! where `<module>` is a native or diffusers module path (mapped like the base tensors by
//! [`native_name`]) and `group` is a dict the LoRA sits in inside a torch checkpoint, such as
//! LongLive's `generator_lora` (the torch reader flattens nested dicts into dotted names).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use dfrt::{Error, Result};
use rayon::prelude::*;

use crate::convert::{native_name, strip_prefixes};
use crate::source::Source;

/// What `--lora`, `--lora-alpha` and `--lora-scale` ask for.
#[derive(Clone, Debug)]
pub struct LoraOptions {
    /// The LoRA file (safetensors or torch `.pt`).
    pub path: PathBuf,
    /// peft's `lora_alpha`; default: each pair's rank (scaling 1).
    pub alpha: Option<f64>,
    /// The scaling itself, overriding alpha/r (e.g. for rsLoRA's alpha/√r).
    pub scale: Option<f64>,
}

/// What the merge did, for the user.
#[derive(Clone, Debug)]
pub struct LoraReport {
    pub path: PathBuf,
    /// The dict the LoRA was taken from (`generator_lora`), if it sat in one.
    pub group: Option<String>,
    /// Linear weights merged.
    pub merged: usize,
    /// The distinct ranks (one, unless the adapter used a per-module rank pattern).
    pub ranks: Vec<usize>,
    /// The distinct scalings applied.
    pub scales: Vec<f64>,
    /// The options' alpha and scale, to say where the scaling came from.
    pub alpha: Option<f64>,
    pub scale: Option<f64>,
}

impl LoraReport {
    /// One line: what was merged, with which rank and scaling.
    pub fn summary(&self) -> String {
        let list = |v: Vec<String>| v.join(", ");
        let from = match (self.scale, self.alpha) {
            (Some(_), _) => "from --lora-scale".to_string(),
            (None, Some(a)) => format!("alpha {a} / rank"),
            (None, None) => "alpha = rank, the default; --lora-alpha sets it".to_string(),
        };
        format!(
            "merged the LoRA {}{} into {} Linear weights: rank {}, scaling {} ({from})",
            self.path.display(),
            self.group.as_ref().map(|g| format!(" (dict `{g}`)")).unwrap_or_default(),
            self.merged,
            list(self.ranks.iter().map(|r| r.to_string()).collect()),
            list(self.scales.iter().map(|s| s.to_string()).collect()),
        )
    }
}

/// One Linear weight to merge: indices of A and B in the LoRA source, the rank and scaling.
#[derive(Clone, Debug)]
pub struct Merge {
    pub a: usize,
    pub b: usize,
    pub rank: usize,
    pub scale: f64,
}

/// The opened LoRA file and what to merge into which native weight.
pub struct LoraPlan {
    pub source: Source,
    /// Native base weight name → merge.
    pub merges: HashMap<String, Merge>,
    pub report: LoraReport,
    /// Remarks for the convert report (dicts and entries ignored).
    pub notes: Vec<String>,
}

impl LoraPlan {
    /// `w` (the base weight `name`, row-major f32) with its LoRA merged, if it has one.
    pub fn apply(&self, name: &str, mut w: Vec<f32>) -> Result<Vec<f32>> {
        if let Some(m) = self.merges.get(name) {
            let a = self.source.f32(&self.source.tensors[m.a])?;
            let b = self.source.f32(&self.source.tensors[m.b])?;
            merge_into(&mut w, &a, &b, m.rank, m.scale);
        }
        Ok(w)
    }
}

/// `w += scale · (b @ a)` for `w [out, in]`, `b [out, rank]`, `a [rank, in]` (shapes checked
/// by the caller), accumulated in f64 and rounded once to f32, so a rank-256 sum loses nothing.
pub fn merge_into(w: &mut [f32], a: &[f32], b: &[f32], rank: usize, scale: f64) {
    let inputs = a.len() / rank;
    // Rows are independent: one row's accumulator (`in` f64s) and all of `a` stay in cache.
    w.par_chunks_mut(inputs).zip(b.par_chunks(rank)).for_each(|(w_row, b_row)| {
        let mut acc = vec![0f64; inputs];
        for (&bk, a_row) in b_row.iter().zip(a.chunks_exact(inputs)) {
            let bk = bk as f64;
            for (s, &x) in acc.iter_mut().zip(a_row) {
                *s += bk * x as f64;
            }
        }
        for (x, s) in w_row.iter_mut().zip(acc) {
            *x = (*x as f64 + scale * s) as f32;
        }
    });
}

/// `(module path, is lora_B)` for a PEFT LoRA key `<module>.lora_A[.<adapter>].weight`.
pub fn parse_lora_key(name: &str) -> Option<(&str, bool)> {
    let (pos, is_b) = [(name.rfind(".lora_A."), false), (name.rfind(".lora_B."), true)]
        .into_iter()
        .filter_map(|(p, b)| p.map(|p| (p, b)))
        .max()?;
    let rest = &name[pos + ".lora_A.".len()..];
    // `weight`, or `default.weight` when peft kept the adapter name.
    let ok = rest == "weight" || rest.strip_suffix(".weight").is_some_and(|a| !a.is_empty() && !a.contains('.'));
    (ok && pos > 0).then(|| (&name[..pos], is_b))
}

/// Prefixes that wrap the module path in LoRA files: peft's `base_model.model.`, a diffusers
/// pipeline's `transformer.`, ComfyUI's `diffusion_model.` (plus `model.`/`module.`, which
/// [`strip_prefixes`] removes).
const LORA_PREFIXES: [&str; 4] = ["base_model.model.", "base_model.", "transformer.", "diffusion_model."];

/// The native name of the weight a LoRA module path adapts (`<module>.weight`).
pub fn lora_base_name(module: &str) -> String {
    let mut k = strip_prefixes(module);
    while let Some(r) = LORA_PREFIXES.iter().find_map(|p| k.strip_prefix(p)) {
        k = strip_prefixes(r);
    }
    native_name(&format!("{k}.weight"))
}

/// First name segments that start a module path; any other first segment of a LoRA key is a
/// dict the LoRA sits in (LongLive's `generator_lora`, next to `critic_lora`).
const MODULE_ROOTS: [&str; 17] = [
    "base_model",
    "model",
    "module",
    "transformer",
    "diffusion_model",
    "_fsdp_wrapped_module",
    "_checkpoint_wrapped_module",
    "_orig_mod",
    "blocks",
    "head",
    "patch_embedding",
    "text_embedding",
    "time_embedding",
    "time_projection",
    "img_emb",
    "condition_embedder",
    "proj_out",
];

fn group_of(name: &str) -> Option<&str> {
    let first = name.split('.').next().unwrap_or(name);
    (!MODULE_ROOTS.contains(&first)).then_some(first)
}

fn first_names(names: &[&str], n: usize) -> String {
    let mut s = names.iter().take(n).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    if names.len() > n {
        s += &format!(" and {} more", names.len() - n);
    }
    s
}

/// Opens the LoRA and matches each lora_A/lora_B pair to a base weight of `base` (native
/// name → shape, the tensors the checkpoint will hold); reads no tensor data. Every problem
/// is an error naming the tensor.
pub fn plan_lora(opts: &LoraOptions, base: &HashMap<&str, &[usize]>) -> Result<LoraPlan> {
    let source = Source::open(&opts.path)?;
    let path = &opts.path;
    let bad = |msg: String| Error::Checkpoint { path: path.display().to_string(), msg };
    for (what, v) in [("--lora-alpha", opts.alpha), ("--lora-scale", opts.scale)] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(Error::Config(format!("{what} must be a finite number")));
        }
    }
    let names: Vec<&str> = source.tensors.iter().map(|t| t.name.as_str()).collect();
    let lora: Vec<&str> = names.iter().copied().filter(|n| parse_lora_key(n).is_some()).collect();
    if lora.is_empty() {
        return Err(bad(format!(
            "no LoRA found: no `<module>.lora_A.weight`/`<module>.lora_B.weight` tensors (keys seen: {})",
            if names.is_empty() { "none".to_string() } else { first_names(&names, 8) }
        )));
    }

    // Which dict: top-level keys if there are any, else the only group, else `generator_lora`.
    let groups: BTreeSet<&str> = lora.iter().filter_map(|n| group_of(n)).collect();
    let group = if lora.iter().any(|n| group_of(n).is_none()) {
        None
    } else if groups.len() == 1 {
        groups.first().copied()
    } else if groups.contains("generator_lora") {
        Some("generator_lora")
    } else {
        return Err(bad(format!(
            "LoRA tensors in several dicts ({}) and none is `generator_lora`: keep one dict in the file",
            groups.iter().map(|g| format!("`{g}`")).collect::<Vec<_>>().join(", ")
        )));
    };
    let mut notes = Vec::new();
    if let Some(g) = group {
        notes.push(format!("LoRA: took the `{g}` dict"));
    }
    let mut ignored: BTreeMap<Option<&str>, usize> = BTreeMap::new();
    for g in names.iter().map(|n| group_of(n)).filter(|g| *g != group) {
        *ignored.entry(g).or_default() += 1;
    }
    for (g, n) in ignored {
        let at = g.map_or("at the top level".to_string(), |g| format!("in `{g}`"));
        notes.push(format!("LoRA: ignored {n} tensors {at}"));
    }

    // Pair each module's lora_A with its lora_B.
    let mut pairs: BTreeMap<&str, [Option<usize>; 2]> = BTreeMap::new();
    for (i, t) in source.tensors.iter().enumerate() {
        if group_of(&t.name) != group {
            continue;
        }
        let Some((module, is_b)) = parse_lora_key(&t.name) else {
            // A trained bias, a fully trained module (`modules_to_save`) or a DoRA magnitude
            // would change the model too: refuse rather than merge half of the adapter.
            return Err(Error::tensor(
                &t.name,
                "is not a lora_A/lora_B weight: only plain LoRA adapters can be merged (no biases, DoRA or saved modules)",
            ));
        };
        // The dict's name is not part of the module path.
        let module = group.and_then(|g| module.strip_prefix(g)?.strip_prefix('.')).unwrap_or(module);
        let slot = &mut pairs.entry(module).or_default()[is_b as usize];
        if let Some(j) = slot.replace(i) {
            return Err(Error::tensor(
                &t.name,
                format!("a second LoRA weight for module `{module}` (first: `{}`)", names[j]),
            ));
        }
    }

    let mut merges: HashMap<String, Merge> = HashMap::new();
    let mut from: HashMap<String, &str> = HashMap::new();
    for (module, [a, b]) in pairs {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) => return Err(Error::tensor(names[a], "has no matching lora_B weight")),
            (None, Some(b)) => return Err(Error::tensor(names[b], "has no matching lora_A weight")),
            (None, None) => unreachable!("a module enters `pairs` with one of its weights"),
        };
        let (an, bn) = (names[a], names[b]);
        let base_name = lora_base_name(module);
        let w = *base.get(base_name.as_str()).ok_or_else(|| {
            Error::tensor(an, format!("adapts `{base_name}`, which is not a weight of the checkpoint"))
        })?;
        let &[out, inputs] = w else {
            return Err(Error::tensor(
                an,
                format!("adapts `{base_name}` of shape {w:?}, which is not a Linear weight"),
            ));
        };
        let (sa, sb) = (&source.tensors[a].shape, &source.tensors[b].shape);
        let &[r, a_in] = sa.as_slice() else {
            return Err(Error::tensor(an, format!("has shape {sa:?}, expected [rank, in]")));
        };
        let &[b_out, b_r] = sb.as_slice() else {
            return Err(Error::tensor(bn, format!("has shape {sb:?}, expected [out, rank]")));
        };
        if r == 0 {
            return Err(Error::tensor(an, "has rank 0"));
        }
        if a_in != inputs {
            return Err(Error::tensor(
                an,
                format!("has shape {sa:?}: {a_in} inputs, but `{base_name}` {w:?} has {inputs}"),
            ));
        }
        if b_out != out {
            return Err(Error::tensor(
                bn,
                format!("has shape {sb:?}: {b_out} outputs, but `{base_name}` {w:?} has {out}"),
            ));
        }
        if b_r != r {
            return Err(Error::tensor(bn, format!("has rank {b_r} but its lora_A `{an}` has rank {r}")));
        }
        if let Some(prev) = from.insert(base_name.clone(), an) {
            return Err(Error::tensor(&base_name, format!("adapted twice, by `{prev}` and `{an}`")));
        }
        let scale = opts.scale.unwrap_or_else(|| opts.alpha.unwrap_or(r as f64) / r as f64);
        merges.insert(base_name, Merge { a, b, rank: r, scale });
    }

    let ranks: BTreeSet<usize> = merges.values().map(|m| m.rank).collect();
    let mut scales: Vec<f64> = merges.values().map(|m| m.scale).collect();
    scales.sort_by(f64::total_cmp);
    scales.dedup();
    let report = LoraReport {
        path: path.to_path_buf(),
        group: group.map(String::from),
        merged: merges.len(),
        ranks: ranks.into_iter().collect(),
        scales,
        alpha: opts.alpha,
        scale: opts.scale,
    };
    Ok(LoraPlan { source, merges, report, notes })
}

/// The base-weight map [`plan_lora`] takes, from a convert plan's `(name, shape, ..)` list.
pub fn base_shapes(tensors: &[(String, Vec<usize>, usize, usize)]) -> HashMap<&str, &[usize]> {
    tensors.iter().map(|(n, s, _, _)| (n.as_str(), s.as_slice())).collect()
}
