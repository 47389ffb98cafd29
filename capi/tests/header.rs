//! The committed header `capi/include/dfrt.h` must be what the pinned cbindgen makes from
//! `capi/src/lib.rs` today. Regenerate with `DFRT_BLESS=1 cargo test -p dfrt-capi --test header`.

use std::path::PathBuf;

#[test]
fn header_matches_the_source() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("capi/cbindgen.toml");
    // with_src parses the one source file; no `cargo metadata` run inside the test.
    let bindings = cbindgen::Builder::new().with_config(config).with_src(dir.join("src/lib.rs")).generate().expect("cbindgen failed on capi/src/lib.rs");
    let mut out = Vec::new();
    bindings.write(&mut out);
    let got = String::from_utf8(out).expect("header is UTF-8");
    let path = dir.join("include/dfrt.h");
    if std::env::var_os("DFRT_BLESS").is_some() {
        std::fs::write(&path, &got).expect("write capi/include/dfrt.h");
        eprintln!("wrote {}", path.display());
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
        let i = g.iter().zip(&w).position(|(a, b)| a != b).unwrap_or(g.len().min(w.len()));
        panic!(
            "capi/include/dfrt.h is out of date with capi/src/lib.rs (first difference at line {}):\n  committed: {:?}\n  generated: {:?}\n({} lines committed, {} generated)\nRegenerate it with:\n  DFRT_BLESS=1 cargo test -p dfrt-capi --test header\nand commit the result.",
            i + 1,
            w.get(i).copied().unwrap_or("<end of file>"),
            g.get(i).copied().unwrap_or("<end of file>"),
            w.len(),
            g.len()
        );
    }
}
