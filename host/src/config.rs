//! Model configuration of a Wan2.1-family causal DiT.
//!
//! The runtime checkpoint stores this as JSON under the safetensors metadata key
//! [`crate::checkpoint::CONFIG_KEY`]. Field names follow the official `WanModel` arguments.
//!
//! ```
//! use dfrt::ModelConfig;
//!
//! let wan = ModelConfig::preset("wan-1.3b")?;
//! assert_eq!((wan.dim, wan.num_heads, wan.num_layers, wan.head_dim()), (1536, 12, 30, 128));
//! // 16 latent channels × a 1×2×2 patch come out of the head per token.
//! assert_eq!(wan.patch_features(), 64);
//!
//! // The JSON form is what a checkpoint carries; parsing validates it.
//! let tiny = ModelConfig::preset("tiny")?;
//! assert_eq!(ModelConfig::from_json(&tiny.to_json())?, tiny);
//! let bad = tiny.to_json().replace("\"num_heads\":2", "\"num_heads\":3");
//! assert!(ModelConfig::from_json(&bad).unwrap_err().to_string().contains("not divisible"));
//! # Ok::<(), dfrt::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Latent frames per autoregressive chunk (Self-Forcing's `num_frame_per_block`).
pub const FRAMES_PER_CHUNK: usize = 3;

/// The architecture of a Wan2.1-family DiT: everything needed to know the tensor names and
/// shapes ([`crate::names::expected_tensors`]) and to run the model. Build one with
/// [`ModelConfig::preset`], read one from a checkpoint ([`crate::checkpoint::TensorFile::config`]),
/// or fill the fields and call [`ModelConfig::validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Hidden size of the residual stream.
    pub dim: usize,
    /// Hidden size of the FFN.
    pub ffn_dim: usize,
    /// Width of the sinusoidal time embedding.
    pub freq_dim: usize,
    /// Width of the text embedding (umT5: 4096).
    pub text_dim: usize,
    /// Number of context tokens the model sees; shorter contexts are zero padded.
    pub text_len: usize,
    /// Latent channels in (16 for the Wan2.1 VAE).
    pub in_dim: usize,
    /// Latent channels out (the predicted flow).
    pub out_dim: usize,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Patch size (frames, height, width). Wan uses (1, 2, 2).
    pub patch_size: [usize; 3],
    /// Epsilon of every LayerNorm and RMSNorm.
    pub eps: f32,
    /// RMSNorm on q and k in self- and cross-attention (`norm_q`, `norm_k`).
    pub qk_norm: bool,
    /// LayerNorm with affine weights before cross-attention (`norm3`).
    pub cross_attn_norm: bool,
}

impl ModelConfig {
    /// Width of one attention head: `dim / num_heads` (128 for every Wan2.1 model).
    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// Number of output features of the head: out_dim × prod(patch_size).
    pub fn patch_features(&self) -> usize {
        self.out_dim * self.patch_size.iter().product::<usize>()
    }

    /// Checks the invariants the model code relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.num_heads == 0 || self.dim == 0 || !self.dim.is_multiple_of(self.num_heads) {
            return bad(format!("dim {} is not divisible by num_heads {}", self.dim, self.num_heads));
        }
        let hd = self.head_dim();
        if !hd.is_multiple_of(2) || hd < 6 {
            return bad(format!("head_dim {hd} must be even and at least 6 for 3D RoPE"));
        }
        if self.num_layers == 0 || self.ffn_dim == 0 || self.freq_dim == 0 || !self.freq_dim.is_multiple_of(2) {
            return bad("num_layers, ffn_dim must be > 0 and freq_dim even and > 0".into());
        }
        if self.text_dim == 0 || self.text_len == 0 || self.in_dim == 0 || self.out_dim == 0 {
            return bad("text_dim, text_len, in_dim, out_dim must be > 0".into());
        }
        if self.patch_size.contains(&0) || self.patch_size[0] != 1 {
            return bad(format!("patch_size {:?} unsupported: the temporal patch must be 1", self.patch_size));
        }
        if !(self.eps > 0.0) {
            return bad(format!("eps {} must be positive", self.eps));
        }
        Ok(())
    }

    /// Known configurations, by name (see [`ModelConfig::PRESETS`]): `tiny` (2 layers, dim 256:
    /// the public golden cases), `tiny4` (the same with 4 layers), `small` (CPU benchmarks),
    /// `wan-1.3b` and `wan-14b` (the released Wan2.1 T2V models).
    ///
    /// ```
    /// use dfrt::ModelConfig;
    ///
    /// for name in ModelConfig::PRESETS {
    ///     ModelConfig::preset(name)?.validate()?;
    /// }
    /// let tiny = ModelConfig::preset("tiny")?;
    /// assert_eq!((tiny.dim, tiny.num_heads, tiny.num_layers, tiny.text_dim), (256, 2, 2, 64));
    /// let e = ModelConfig::preset("wan-7b").unwrap_err();
    /// assert!(e.to_string().contains("unknown preset `wan-7b`"), "{e}");
    /// # Ok::<(), dfrt::Error>(())
    /// ```
    pub fn preset(name: &str) -> Result<Self> {
        let base = ModelConfig {
            dim: 1536,
            ffn_dim: 8960,
            freq_dim: 256,
            text_dim: 4096,
            text_len: 512,
            in_dim: 16,
            out_dim: 16,
            num_heads: 12,
            num_layers: 30,
            patch_size: [1, 2, 2],
            eps: 1e-6,
            qk_norm: true,
            cross_attn_norm: true,
        };
        let cfg = match name {
            // The configuration of the public golden cases.
            "tiny" => {
                ModelConfig { dim: 256, ffn_dim: 512, text_dim: 64, text_len: 16, num_heads: 2, num_layers: 2, ..base }
            }
            // The configuration of the df-tiny golden case (4 layers).
            "tiny4" => {
                ModelConfig { dim: 256, ffn_dim: 512, text_dim: 64, text_len: 16, num_heads: 2, num_layers: 4, ..base }
            }
            // A small multi-head config for CPU benchmarks (head dim 64).
            "small" => ModelConfig {
                dim: 512,
                ffn_dim: 1024,
                text_dim: 256,
                text_len: 32,
                num_heads: 8,
                num_layers: 4,
                ..base
            },
            "wan-1.3b" => base,
            "wan-14b" => ModelConfig { dim: 5120, ffn_dim: 13824, num_heads: 40, num_layers: 40, ..base },
            _ => return Err(Error::Config(format!("unknown preset `{name}` (known: {})", Self::PRESETS.join(", ")))),
        };
        Ok(cfg)
    }

    /// The names [`ModelConfig::preset`] knows.
    pub const PRESETS: &'static [&'static str] = &["tiny", "tiny4", "small", "wan-1.3b", "wan-14b"];

    /// Looks up the head count of a known model width: Wan2.1 uses head_dim 128 throughout.
    ///
    /// ```
    /// assert_eq!(dfrt::ModelConfig::default_heads_for_dim(5120), 40);
    /// ```
    pub fn default_heads_for_dim(dim: usize) -> usize {
        (dim / 128).max(1)
    }

    /// The compact JSON stored under [`crate::checkpoint::CONFIG_KEY`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    /// Parses the JSON of [`ModelConfig::to_json`] and [validates](ModelConfig::validate) it.
    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: ModelConfig = serde_json::from_str(s).map_err(|e| Error::Config(format!("bad config JSON: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_roundtrip() {
        for p in ModelConfig::PRESETS {
            let c = ModelConfig::preset(p).unwrap();
            c.validate().unwrap();
            assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), c);
        }
        assert_eq!(ModelConfig::preset("wan-1.3b").unwrap().head_dim(), 128);
        assert!(ModelConfig::preset("nope").unwrap_err().to_string().contains("unknown preset"));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let mut c = ModelConfig::preset("tiny").unwrap();
        c.num_heads = 3;
        assert!(c.validate().is_err());
    }
}
