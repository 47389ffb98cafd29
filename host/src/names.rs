//! Native Wan tensor names and shapes: what a runtime checkpoint of a given [`ModelConfig`]
//! holds. The converter validates against it, the synthetic-weight generator produces it, and
//! [`crate::run::ModelSource::open`] checks a checkpoint against it before anything loads.
//! `ModelWeights::load` spells the same names again as it builds each module; every
//! checkpoint the tests load is synthesised from this list, so a name the loader spells
//! differently fails them.

use crate::ModelConfig;

/// Every tensor of the native Wan2.1 DiT state dict for `cfg`, in the official module order
/// (patch embedding, text/time embeddings, blocks, head). `norm_q`/`norm_k` exist only with
/// `qk_norm`, `norm3` only with `cross_attn_norm` (otherwise those modules are parameterless).
///
/// ```
/// let cfg = dfrt::ModelConfig::preset("wan-1.3b")?;
/// let t = dfrt::names::expected_tensors(&cfg);
/// assert_eq!(t[0], ("patch_embedding.weight".to_string(), vec![1536, 16, 1, 2, 2]));
/// assert!(t.contains(&("blocks.29.self_attn.norm_q.weight".to_string(), vec![1536])));
/// // About 1.4 billion parameters (the DiT of "1.3B").
/// let params: usize = t.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
/// assert!((1_400_000_000..1_450_000_000).contains(&params), "{params}");
/// # Ok::<(), dfrt::Error>(())
/// ```
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let d = cfg.dim;
    let [pt, ph, pw] = cfg.patch_size;
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| v.push((name, shape));
    let linear = |add: &mut dyn FnMut(String, Vec<usize>), p: &str, out: usize, inp: usize| {
        add(format!("{p}.weight"), vec![out, inp]);
        add(format!("{p}.bias"), vec![out]);
    };
    add("patch_embedding.weight".into(), vec![d, cfg.in_dim, pt, ph, pw]);
    add("patch_embedding.bias".into(), vec![d]);
    linear(&mut add, "text_embedding.0", d, cfg.text_dim);
    linear(&mut add, "text_embedding.2", d, d);
    linear(&mut add, "time_embedding.0", d, cfg.freq_dim);
    linear(&mut add, "time_embedding.2", d, d);
    linear(&mut add, "time_projection.1", 6 * d, d);
    for i in 0..cfg.num_layers {
        for attn in ["self_attn", "cross_attn"] {
            for p in ["q", "k", "v", "o"] {
                linear(&mut add, &format!("blocks.{i}.{attn}.{p}"), d, d);
            }
            if cfg.qk_norm {
                add(format!("blocks.{i}.{attn}.norm_q.weight"), vec![d]);
                add(format!("blocks.{i}.{attn}.norm_k.weight"), vec![d]);
            }
            if attn == "self_attn" && cfg.cross_attn_norm {
                add(format!("blocks.{i}.norm3.weight"), vec![d]);
                add(format!("blocks.{i}.norm3.bias"), vec![d]);
            }
        }
        linear(&mut add, &format!("blocks.{i}.ffn.0"), cfg.ffn_dim, d);
        linear(&mut add, &format!("blocks.{i}.ffn.2"), d, cfg.ffn_dim);
        add(format!("blocks.{i}.modulation"), vec![1, 6, d]);
    }
    linear(&mut add, "head.head", cfg.patch_features(), d);
    add("head.modulation".into(), vec![1, 2, d]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_1_3b_parameter_count() {
        let cfg = ModelConfig::preset("wan-1.3b").unwrap();
        let t = expected_tensors(&cfg);
        let n: usize = t.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        // Wan2.1-T2V-1.3B has 1,418,996,800 parameters (about 1.42 B).
        assert_eq!(n, 1_418_996_800, "parameter count");
        assert_eq!(t.len(), 12 + 30 * 27 + 3);
        let names: std::collections::BTreeSet<_> = t.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names.len(), t.len(), "names are unique");
    }
}
