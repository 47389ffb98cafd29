//! The committed header `capi/include/dfrt.h` must be what the pinned cbindgen makes from
//! `capi/src/lib.rs` today. Regenerate with `DFRT_BLESS=1 cargo test -p dfrt-capi --test header`.

use std::path::PathBuf;

#[test]
fn header_matches_the_source() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("capi/cbindgen.toml");
    // with_src parses lib.rs and the modules it declares; no `cargo metadata` run inside the test.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen failed on capi/src/lib.rs");
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

/// The header stands alone in strict C99 and in C++ (`extern "C"`, no C-only constructs).
#[test]
fn header_compiles_as_c99_and_cpp() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("dfrt-header-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let src = out.join("use.c");
    // Every type and a call signature in use, so a mismatch is a compile error.
    std::fs::write(
        &src,
        "#include \"dfrt.h\"\n\
         static DfrtStatus (*load)(const char *, const char *, DfrtModel **, DfrtError *) = dfrt_model_load;\n\
         int use_all(void) { DfrtError e; DfrtSessionInfo i; DfrtModelInfo m; DfrtProgress p; DfrtProgressFn f = 0;\n\
         e.code = DFRT_OK; i.chunk_len = 0; m.text_dim = 0; p.step = -1; (void)f; (void)load;\n\
         return (int)sizeof e.message + (int)i.chunk_len + (int)m.text_dim + p.step + DFRT_ERR_PANIC; }\n",
    )
    .unwrap();
    let compilers: [(&str, &[&str]); 2] =
        [("cc", &["-x", "c", "-std=c99", "-pedantic"]), ("c++", &["-x", "c++", "-std=c++11", "-pedantic"])];
    for (cc, flags) in compilers {
        let o = match std::process::Command::new(cc)
            .args(flags)
            .args(["-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I"])
            .arg(dir.join("include"))
            .arg(&src)
            .output()
        {
            Ok(o) => o,
            // No C++ compiler on this machine: the C one is required, C++ is checked where present.
            Err(e) if cc == "c++" => {
                eprintln!("skipping the C++ check: {e}");
                continue;
            }
            Err(e) => panic!("cannot run the C compiler `{cc}`: {e}"),
        };
        assert!(
            o.status.success(),
            "dfrt.h does not compile with {cc} {flags:?}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    std::fs::remove_dir_all(&out).ok();
}
