//! Shared by the benches: command-line options, device choice, table and JSON output.

#![allow(dead_code)]

use std::path::PathBuf;

use dfrt::run::DeviceChoice;

/// `--key value` options (and `--key=value`); `--bench`, which `cargo bench` passes, is ignored.
pub struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    pub fn parse(known: &[&str]) -> Result<Args, String> {
        let mut pairs = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "--bench" {
                continue;
            }
            if a == "--help" || a == "-h" {
                return Err(format!(
                    "options: {}",
                    known.iter().map(|k| format!("--{k} V")).collect::<Vec<_>>().join(" ")
                ));
            }
            let Some(k) = a.strip_prefix("--") else { return Err(format!("unexpected argument `{a}`")) };
            let (k, v) = match k.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (k.to_string(), it.next().ok_or_else(|| format!("--{k} needs a value"))?),
            };
            if !known.contains(&k.as_str()) {
                return Err(format!("unknown option --{k} (known: {})", known.join(", ")));
            }
            pairs.push((k, v));
        }
        Ok(Args { pairs })
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }

    /// Every value given for `k`, in order (a repeatable option).
    pub fn all(&self, k: &str) -> Vec<String> {
        self.pairs.iter().filter(|(a, _)| a == k).map(|(_, v)| v.clone()).collect()
    }

    /// `--device`, else `$DFRT_BENCH_DEVICE`, else `auto`.
    pub fn device(&self) -> String {
        self.get("device")
            .map(str::to_string)
            .or_else(|| std::env::var("DFRT_BENCH_DEVICE").ok())
            .unwrap_or_else(|| "auto".into())
    }

    /// The device of [`Args::device`]: a [`DeviceChoice`] string, or `auto` (the first CUDA
    /// device when one answers, else `fallback`, saying why on stderr).
    pub fn device_choice(&self, fallback: DeviceChoice) -> Result<DeviceChoice, String> {
        match self.device().as_str() {
            "auto" => {
                let (d, why) = DeviceChoice::auto(fallback);
                if let Some(e) = why {
                    eprintln!("no GPU ({e}); running on {d}");
                }
                Ok(d)
            }
            d => d.parse().map_err(|e: dfrt::Error| format!("{e} (or auto)")),
        }
    }

    pub fn json(&self) -> Option<PathBuf> {
        self.get("json").map(PathBuf::from)
    }
}

/// A plain text table; the columns in `right` are right-aligned (numbers).
pub fn table(head: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if right.contains(&i) {
                s += &" ".repeat(pad);
                s += c;
            } else {
                s += c;
                s += &" ".repeat(pad);
            }
            s += "  ";
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    out += &line(w.iter().map(|&n| "-".repeat(n)).collect::<Vec<_>>().iter().map(|s| s.as_str()).collect());
    for r in rows {
        out += &line(r.iter().map(|s| s.as_str()).collect());
    }
    out
}

/// Milliseconds with three significant-ish digits.
pub fn ms(secs: f64) -> String {
    let m = secs * 1e3;
    if m >= 100.0 {
        format!("{m:.1}")
    } else if m >= 1.0 {
        format!("{m:.3}")
    } else {
        format!("{m:.4}")
    }
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn write_json(path: &std::path::Path, v: &serde_json::Value) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, s + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
}

/// What every sim figure is (and is not).
pub const SIM_NOTE: &str = "device sim: the SIMT simulator on the CPU at a tiny size; these times check that the bench runs and are NOT GPU figures";

/// What the e2e bench prints on the CPU reference backend.
pub const CPU_NOTE: &str = "device cpu: the CPU reference backend; CPU figures, NOT GPU figures";
