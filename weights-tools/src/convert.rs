//! Conversion of Wan2.1-family DiT checkpoints to the runtime format: choosing the state
//! dict inside a Self-Forcing checkpoint, normalising key names (wrapper prefixes, diffusers
//! names), inferring the config from shapes, validating, and writing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use dfrt::checkpoint::DType;
use dfrt::names::expected_tensors;
use dfrt::{Error, ModelConfig, Result};

use crate::lora::{base_shapes, plan_lora, LoraOptions, LoraPlan, LoraReport};
use crate::source::{Source, SrcTensor};
use crate::writer::{encode, write_checkpoint_streaming, Spec};

/// Wan's `text_len`; the weights do not determine it.
pub const DEFAULT_TEXT_LEN: usize = 512;
/// Wan's RMSNorm/LayerNorm epsilon; the weights do not determine it.
pub const DEFAULT_EPS: f32 = 1e-6;

#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Attention heads; default: a preset of the same width, else dim/128.
    pub heads: Option<usize>,
    /// Context length; default [`DEFAULT_TEXT_LEN`].
    pub text_len: Option<usize>,
    /// Output dtype (F32 or BF16); default: the source dtype if it is uniformly F32 or BF16, else F32.
    pub dtype: Option<DType>,
    /// In a Self-Forcing `{generator, generator_ema}` checkpoint: `Some(true)` takes the EMA
    /// weights, `Some(false)` the raw generator; `None` takes the EMA weights when present
    /// (the official inference command passes `--use_ema`).
    pub ema: Option<bool>,
    /// Drop DiT-looking tensors that the native layout does not have instead of failing.
    pub drop_unknown: bool,
    /// A PEFT LoRA to merge into the Linear weights ([`crate::lora`]).
    pub lora: Option<LoraOptions>,
}

/// What a conversion did, for the user.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// The config written into the checkpoint.
    pub config: ModelConfig,
    /// The dtype of every written tensor.
    pub dtype: DType,
    /// The `generator`/`generator_ema` group taken, if the file had groups.
    pub group: Option<String>,
    /// Source tensors renamed (from → to), wrapper prefixes aside.
    pub renamed: usize,
    /// Source tensors not written, with the reason.
    pub dropped: Vec<(String, String)>,
    /// Remarks: defaults taken, non-tensor entries skipped.
    pub notes: Vec<String>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub bytes: usize,
    /// The LoRA merged, if one was given.
    pub lora: Option<LoraReport>,
}

/// Removes training-wrapper prefixes: FSDP/activation-checkpointing/compile wrappers anywhere
/// in the key, and leading `model.`/`module.` (WanDiffusionWrapper, DDP).
pub fn strip_prefixes(key: &str) -> String {
    let mut k = key.to_string();
    for w in ["_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."] {
        k = k.replace(w, "");
    }
    loop {
        if let Some(r) = k.strip_prefix("model.").or_else(|| k.strip_prefix("module.")) {
            k = r.to_string();
        } else {
            return k;
        }
    }
}

/// Maps a diffusers `WanTransformer3DModel` key to its native Wan name; `None` if it is not
/// a diffusers DiT key (native keys come back as `None` too).
pub fn diffusers_to_native(k: &str) -> Option<String> {
    const TOP: [(&str, &str); 6] = [
        ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
        ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
        ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
        ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
        ("condition_embedder.time_proj.", "time_projection.1."),
        ("proj_out.", "head.head."),
    ];
    if k == "scale_shift_table" {
        return Some("head.modulation".into());
    }
    for (from, to) in TOP {
        if let Some(rest) = k.strip_prefix(from) {
            return Some(format!("{to}{rest}"));
        }
    }
    let rest = k.strip_prefix("blocks.")?;
    let (idx, tail) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let tail = if tail == "scale_shift_table" {
        "modulation".to_string()
    } else if let Some(a) = tail
        .strip_prefix("attn1.")
        .map(|a| ("self_attn", a))
        .or_else(|| tail.strip_prefix("attn2.").map(|a| ("cross_attn", a)))
    {
        let (attn, sub) = a;
        let sub = [
            ("to_q.", "q."),
            ("to_k.", "k."),
            ("to_v.", "v."),
            ("to_out.0.", "o."),
            ("norm_q.", "norm_q."),
            ("norm_k.", "norm_k."),
        ]
        .iter()
        .find_map(|(f, t)| sub.strip_prefix(f).map(|r| format!("{t}{r}")))?;
        format!("{attn}.{sub}")
    } else if let Some(r) = tail.strip_prefix("norm2.") {
        // diffusers' norm2 is the affine LayerNorm before cross-attention: native norm3.
        format!("norm3.{r}")
    } else if let Some(r) = tail.strip_prefix("ffn.net.0.proj.") {
        format!("ffn.0.{r}")
    } else if let Some(r) = tail.strip_prefix("ffn.net.2.") {
        format!("ffn.2.{r}")
    } else {
        return None;
    };
    Some(format!("blocks.{idx}.{tail}"))
}

/// The native name of a source key: wrapper prefixes stripped, diffusers names mapped.
pub fn native_name(key: &str) -> String {
    let k = strip_prefixes(key);
    diffusers_to_native(&k).unwrap_or(k)
}

fn shape_of<'a>(shapes: &'a BTreeMap<String, Vec<usize>>, name: &str) -> Result<&'a [usize]> {
    shapes
        .get(name)
        .map(|s| s.as_slice())
        .ok_or_else(|| Error::tensor(name, "missing: needed to infer the model config"))
}

fn dim_of(shapes: &BTreeMap<String, Vec<usize>>, name: &str, rank: usize) -> Result<Vec<usize>> {
    let s = shape_of(shapes, name)?;
    if s.len() != rank {
        return Err(Error::tensor(name, format!("has shape {s:?}, expected rank {rank}")));
    }
    Ok(s.to_vec())
}

/// Infers the config from native tensor names and shapes. The weights fix every field but
/// `num_heads` (from `heads`, else a preset of the same width, else dim/128 as in all Wan2.1
/// models), `text_len` (default 512) and `eps` (1e-6).
pub fn infer_config(
    shapes: &BTreeMap<String, Vec<usize>>,
    heads: Option<usize>,
    text_len: Option<usize>,
) -> Result<ModelConfig> {
    let pe = dim_of(shapes, "patch_embedding.weight", 5)?;
    let (dim, in_dim, patch_size) = (pe[0], pe[1], [pe[2], pe[3], pe[4]]);
    let text_dim = dim_of(shapes, "text_embedding.0.weight", 2)?[1];
    let freq_dim = dim_of(shapes, "time_embedding.0.weight", 2)?[1];
    let ffn_dim = dim_of(shapes, "blocks.0.ffn.0.weight", 2)?[0];
    let head = dim_of(shapes, "head.head.weight", 2)?[0];
    let pp: usize = patch_size.iter().product();
    if pp == 0 || head % pp != 0 {
        return Err(Error::tensor(
            "head.head.weight",
            format!("{head} outputs is not a multiple of the patch volume {pp}"),
        ));
    }
    let mut layers = BTreeSet::new();
    for k in shapes.keys() {
        if let Some(i) =
            k.strip_prefix("blocks.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok())
        {
            layers.insert(i);
        }
    }
    let num_layers = layers.last().map_or(0, |l| l + 1);
    let num_heads = match heads {
        Some(h) => h,
        None => ModelConfig::PRESETS
            .iter()
            .filter_map(|p| ModelConfig::preset(p).ok())
            .find(|p| p.dim == dim)
            .map(|p| p.num_heads)
            .unwrap_or_else(|| ModelConfig::default_heads_for_dim(dim)),
    };
    let cfg = ModelConfig {
        dim,
        ffn_dim,
        freq_dim,
        text_dim,
        text_len: text_len.unwrap_or(DEFAULT_TEXT_LEN),
        in_dim,
        out_dim: head / pp,
        num_heads,
        num_layers,
        patch_size,
        eps: DEFAULT_EPS,
        qk_norm: shapes.contains_key("blocks.0.self_attn.norm_q.weight"),
        cross_attn_norm: shapes.contains_key("blocks.0.norm3.weight"),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Checks that every tensor the config needs is present with its shape; the error names the
/// first tensor that is not.
pub fn validate_shapes(cfg: &ModelConfig, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    for (name, shape) in expected_tensors(cfg) {
        match shapes.get(&name) {
            None => return Err(Error::tensor(&name, "missing from the checkpoint")),
            Some(s) if *s != shape => return Err(Error::tensor(&name, format!("has shape {s:?}, expected {shape:?}"))),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Prefixes of names that belong to the DiT: unknown tensors under them mean a model variant
/// (i2v image cross-attention, LoRA, ...) that this runtime does not implement.
const DIT_PREFIXES: [&str; 7] =
    ["blocks.", "head.", "patch_embedding.", "text_embedding.", "time_embedding.", "time_projection.", "img_emb."];

/// The mapping from native names to source tensors, with the report.
pub struct Plan {
    /// The inferred (or given) config.
    pub config: ModelConfig,
    /// (native name, shape, source file index, index into its `Source::tensors`) in native order.
    pub tensors: Vec<(String, Vec<usize>, usize, usize)>,
    /// What the conversion will report.
    pub report: ConvertReport,
    /// The LoRA to merge (`opts.lora`), matched to `tensors`.
    pub lora: Option<LoraPlan>,
}

/// Decides what to convert from one or more source files (shards of one state dict), and
/// which LoRA weights merge into which tensor; reads no tensor data.
pub fn plan(srcs: &[Source], opts: &ConvertOptions) -> Result<Plan> {
    let mut notes = Vec::new();
    let mut dropped = Vec::new();
    let all: Vec<(usize, usize, &SrcTensor)> =
        srcs.iter().enumerate().flat_map(|(p, s)| s.tensors.iter().enumerate().map(move |(i, t)| (p, i, t))).collect();
    let has = |g: &str| all.iter().any(|(_, _, t)| t.name.starts_with(&format!("{g}.")));
    if all.iter().any(|(_, _, t)| {
        t.name == "token_embedding.weight" || t.name.ends_with("SelfAttention.relative_attention_bias.weight")
    }) {
        return Err(Error::Input(
            "this is a umT5 text-encoder checkpoint, not a DiT: convert it with `dfrt-weights convert-t5`".into(),
        ));
    }
    let (has_gen, has_ema) = (has("generator"), has("generator_ema"));
    let group = match (opts.ema, has_gen, has_ema) {
        (_, false, false) => {
            if opts.ema == Some(true) {
                return Err(Error::Input("--ema: the checkpoint has no `generator_ema` state dict".into()));
            }
            None
        }
        (Some(true), _, false) => {
            return Err(Error::Input("--ema: the checkpoint has no `generator_ema` state dict".into()))
        }
        (Some(false), false, _) => {
            return Err(Error::Input("--no-ema: the checkpoint has no `generator` state dict".into()))
        }
        (Some(false), true, _) => Some("generator"),
        (_, _, true) => Some("generator_ema"),
        (None, true, false) => Some("generator"),
    };
    if let Some(g) = group {
        notes.push(format!("took the `{g}` state dict"));
    }
    let mut by_native: HashMap<String, usize> = HashMap::new();
    let mut shapes = BTreeMap::new();
    let mut renamed = 0;
    for (i, &(_, _, t)) in all.iter().enumerate() {
        let key = match group {
            Some(g) => match t.name.strip_prefix(&format!("{g}.")) {
                Some(k) => k,
                None => {
                    dropped.push((t.name.clone(), format!("not in `{g}`")));
                    continue;
                }
            },
            None => t.name.as_str(),
        };
        let stripped = strip_prefixes(key);
        let native = native_name(key);
        if native != stripped {
            renamed += 1;
        }
        if let Some(&j) = by_native.get(&native) {
            return Err(Error::tensor(&native, format!("both `{}` and `{}` map to it", all[j].2.name, t.name)));
        }
        by_native.insert(native.clone(), i);
        shapes.insert(native, t.shape.clone());
    }
    if renamed > 0 {
        notes.push(format!("mapped {renamed} diffusers tensor names to native names"));
    }
    let config = infer_config(&shapes, opts.heads, opts.text_len)?;
    if opts.heads.is_none() {
        notes.push(format!(
            "num_heads {} (head_dim {}); pass --heads to override",
            config.num_heads,
            config.head_dim()
        ));
    }
    if opts.text_len.is_none() {
        notes.push(format!(
            "text_len {DEFAULT_TEXT_LEN} (Wan's default; the weights do not fix it); pass --text-len to override"
        ));
    }
    validate_shapes(&config, &shapes)?;
    let expected = expected_tensors(&config);
    let wanted: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut unknown: Vec<(String, usize)> =
        by_native.iter().filter(|(n, _)| !wanted.contains(n.as_str())).map(|(n, &i)| (n.clone(), i)).collect();
    unknown.sort();
    for (n, i) in unknown {
        let src_name = &all[i].2.name;
        if n.contains(".lora_") && !opts.drop_unknown {
            return Err(Error::tensor(
                src_name,
                "is a LoRA weight: pass the LoRA with --lora (`ConvertOptions::lora`) to merge it into its base checkpoint",
            ));
        }
        if DIT_PREFIXES.iter().any(|p| n.starts_with(p)) && !opts.drop_unknown {
            return Err(Error::tensor(
                src_name,
                format!("unexpected DiT tensor (native name `{n}`): this model variant (i2v, LoRA, ...) is not supported; --drop-unknown drops it"),
            ));
        }
        dropped.push((src_name.clone(), "not part of the native Wan DiT".into()));
    }
    let mut tensors = Vec::with_capacity(expected.len());
    let mut dtypes = BTreeSet::new();
    for (name, shape) in expected {
        let (part, idx, t) = all[by_native[&name]];
        match t.dtype {
            Some(d @ (DType::F32 | DType::BF16 | DType::F16)) => {
                dtypes.insert(d.safetensors_name());
            }
            _ => return Err(Error::tensor(&t.name, format!("has dtype {}, expected F32, BF16 or F16", t.dtype_name))),
        }
        tensors.push((name, shape, part, idx));
    }
    let dtype = match opts.dtype {
        Some(d @ (DType::F32 | DType::BF16)) => d,
        Some(d) => return Err(Error::Config(format!("output dtype {d:?} is not supported (f32 or bf16)"))),
        None if dtypes.len() == 1 && dtypes.contains("BF16") => DType::BF16,
        None => {
            if dtypes.len() != 1 || !dtypes.contains("F32") {
                notes.push(format!("source dtypes {dtypes:?} are not uniformly F32/BF16: writing F32"));
            }
            DType::F32
        }
    };
    for (name, desc) in srcs.iter().flat_map(|s| &s.others) {
        if group.is_none_or(|g| name.starts_with(&format!("{g}."))) {
            notes.push(format!("skipped non-tensor entry `{name}` ({desc})"));
        }
    }
    let bytes = tensors.iter().map(|(_, s, _, _)| s.iter().product::<usize>() * dtype.size()).sum();
    let lora = opts.lora.as_ref().map(|l| plan_lora(l, &base_shapes(&tensors))).transpose()?;
    notes.extend(lora.iter().flat_map(|l| l.notes.iter().cloned()));
    let report = ConvertReport {
        config: config.clone(),
        dtype,
        group: group.map(String::from),
        renamed,
        dropped,
        notes,
        tensors: tensors.len(),
        bytes,
        lora: lora.as_ref().map(|l| l.report.clone()),
    };
    Ok(Plan { config, tensors, report, lora })
}

/// The files to read for `inputs`: a `*.index.json` (the sharded-checkpoint index of
/// safetensors/diffusers, `{"weight_map": {tensor: file}}`) stands for its shard files.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for p in inputs {
        if p.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            let bad = |m: &str| Error::Checkpoint { path: p.display().to_string(), msg: m.to_string() };
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&format!("bad JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("no `weight_map` object: not a shard index"))?;
            let dir = p.parent().unwrap_or(Path::new("."));
            for f in map.values() {
                let f = dir.join(f.as_str().ok_or_else(|| bad("`weight_map` values must be file names"))?);
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        } else if !out.contains(p) {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::Input("no input files".into()));
    }
    Ok(out)
}

/// Converts `input` (safetensors or torch zip) to a runtime checkpoint at `output`.
pub fn convert_file(input: impl AsRef<Path>, output: impl AsRef<Path>, opts: &ConvertOptions) -> Result<ConvertReport> {
    convert_files(&[input.as_ref().to_path_buf()], output, opts)
}

/// Converts a state dict split over several files (shards, or a `*.index.json`).
pub fn convert_files(inputs: &[PathBuf], output: impl AsRef<Path>, opts: &ConvertOptions) -> Result<ConvertReport> {
    let srcs = expand_inputs(inputs)?.iter().map(Source::open).collect::<Result<Vec<_>>>()?;
    let plan = plan(&srcs, opts)?;
    let dtype = plan.report.dtype;
    let specs: Vec<Spec> =
        plan.tensors.iter().map(|(n, s, _, _)| Spec { name: n.clone(), dtype, shape: s.clone() }).collect();
    write_checkpoint_streaming(output.as_ref(), &plan.config, &specs, |i, _spec, w| {
        let (name, _, part, idx) = &plan.tensors[i];
        let src = &srcs[*part];
        let t = &src.tensors[*idx];
        let io = |e| Error::io(output.as_ref(), e);
        if let Some(l) = plan.lora.as_ref().filter(|l| l.merges.contains_key(name)) {
            // Merged in f32 from the source values, then rounded once to the output dtype.
            w.write_all(&encode(&l.apply(name, src.f32(t)?)?, dtype)?).map_err(io)
        } else if t.dtype == Some(dtype) {
            w.write_all(&src.raw(t)?).map_err(io)
        } else {
            w.write_all(&encode(&src.f32(t)?, dtype)?).map_err(io)
        }
    })?;
    Ok(plan.report)
}
