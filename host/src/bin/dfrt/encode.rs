//! `dfrt encode`: one prompt to a context file with the umT5 encoder.

use super::*;

#[derive(clap::Args)]
pub(super) struct EncodeArgs {
    /// Text-encoder checkpoint (`dfrt-weights convert-t5` of models_t5_umt5-xxl-enc-bf16.pth).
    #[arg(long)]
    pub(super) text_encoder: PathBuf,
    /// Tokenizer folder (google/umt5-xxl, with tokenizer.json).
    #[arg(long)]
    pub(super) tokenizer: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub(super) prompt: String,
    /// Compute device of the encoder: cpu | sim | cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub(super) device: DeviceChoice,
    /// Storage precision: f32 | bf16.
    #[arg(long, default_value = "f32")]
    pub(super) dtype: Precision,
    /// Output safetensors file.
    #[arg(short, long)]
    pub(super) out: PathBuf,
}

/// `dfrt encode`: one prompt to a context file.
pub(super) fn encode(a: EncodeArgs, o: Output) -> Result<()> {
    let precision = a.dtype;
    let t = Instant::now();
    let e = dfrt::text::encode_prompts(
        &a.device,
        precision,
        &a.text_encoder,
        &a.tokenizer,
        std::slice::from_ref(&a.prompt),
        &mut |_, _| {},
    )?;
    let e = &e[0];
    let secs = t.elapsed().as_secs_f64();
    for n in &e.tokens.cleaned.notes {
        o.log(if n.may_differ() { Level::Warn } else { Level::Debug }, n);
    }
    let (rows, dim) = (e.context.rows, e.context.data.len() / e.context.rows);
    let ids: Vec<i64> = e.tokens.ids.iter().map(|&x| x as i64).collect();
    let mask: Vec<i64> = e.tokens.mask.iter().map(|&x| x as i64).collect();
    let mut meta = BTreeMap::new();
    meta.insert("dfrt.prompt".to_string(), a.prompt.clone());
    meta.insert("dfrt.prompt_cleaned".to_string(), e.tokens.cleaned.text.clone());
    meta.insert("dfrt.seq_len".to_string(), e.tokens.len.to_string());
    meta.insert("dfrt.text_encoder".to_string(), a.text_encoder.display().to_string());
    write_safetensors(
        &a.out,
        &[
            OutTensor::f32("context", vec![1, rows, dim], &e.context.data),
            OutTensor::i64("ids", vec![rows], &ids),
            OutTensor::i64("mask", vec![rows], &mask),
        ],
        &meta,
    )?;
    if o.json {
        let j = serde_json::json!({"out": a.out.display().to_string(), "rows": rows, "dim": dim, "seq_len": e.tokens.len,
            "cleaned": e.tokens.cleaned.text, "notes": e.tokens.cleaned.notes.iter().map(|n| n.to_string()).collect::<Vec<_>>(), "encode_s": secs});
        println!("{}", serde_json::to_string_pretty(&j).expect("json"));
    } else {
        o.log(
            Level::Info,
            format_args!(
                "{} tokens → context [{rows}, {dim}] in {secs:.2} s on {}; wrote {}",
                e.tokens.len,
                a.device,
                a.out.display()
            ),
        );
    }
    Ok(())
}
