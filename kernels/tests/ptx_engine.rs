//! The PTX engine: the committed file decodes, unknown instructions are load errors naming
//! them, and planted errors (out-of-bounds store, shared race, divergent shuffle, missing
//! cp.async.wait_group, params size mismatch, trap, partial barrier) give readable reports.

mod common;
use common::*;

use dfrt_kernels::ptx::{self, ir, Counters, PtxOptions};
use dfrt_kernels::sim::{SimError, SimErrorKind};

const HEAD: &str =
    ".version 8.0\n.target sm_90\n.address_size 64\n.extern .shared .align 16 .b8 dyn_smem[];\n";

/// One entry `k` with a 16-byte (two pointer) params struct and `body`.
fn module(body: &str) -> ir::Module {
    let src = format!(
        "{HEAD}.visible .entry k(\n\t.param .align 8 .b8 k_param_0[16]\n)\n{{\n\t.reg .pred %p<4>;\n\t.reg .b16 %rs<4>;\n\t.reg .b32 %r<24>;\n\t.reg .b64 %rd<12>;\n{body}\n}}\n"
    );
    ir::load(&src).unwrap_or_else(|e| panic!("planted kernel does not load: {e}"))
}

fn run(
    m: &ir::Module,
    threads: u32,
    smem: u32,
    p: [u64; 2],
    live: Option<Vec<(u64, u64)>>,
) -> Result<(), SimError> {
    let bytes: Vec<u8> = p.iter().flat_map(|v| v.to_le_bytes()).collect();
    let opts = PtxOptions {
        racecheck: true,
        live,
    };
    // SAFETY: the planted kernels only touch the buffers passed in `p` (or fail memcheck first).
    unsafe {
        ptx::launch_bytes(
            m,
            "k",
            [1, 1, 1],
            [threads, 1, 1],
            smem,
            &bytes,
            8,
            opts,
            None,
        )
    }
}

#[test]
fn committed_ptx_decodes_every_entry() {
    let t0 = std::time::Instant::now();
    let m = ir::load(dfrt_kernels::PTX).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "decoded {} entries, {} instructions in {:?}",
        m.entries.len(),
        m.n_instrs,
        t0.elapsed()
    );
    // Every `.entry` of the text is decoded, and every instruction statement of it.
    let names: Vec<&str> = dfrt_kernels::PTX
        .lines()
        .filter_map(|l| l.strip_prefix(".visible .entry "))
        .map(|l| l.trim_end_matches('('))
        .collect();
    assert!(names.len() > 40, "{} entries", names.len());
    for n in &names {
        assert!(m.entries.contains_key(*n), "entry {n} missing");
    }
    assert_eq!(m.entries.len(), names.len());
    let stmts = dfrt_kernels::PTX
        .lines()
        .map(|l| l.split("//").next().unwrap().trim())
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with('.')
                && !l.ends_with(':')
                && !l.starts_with('{')
                && !l.starts_with('}')
                && !l.starts_with('(')
                && !l.starts_with(')')
                && !l.starts_with('$')
        })
        .count();
    // The three panic stubs hold 5 statements that are not part of any entry (3 exit, 1 trap,
    // 2 calls, minus the `trap; exit;` line counted once); the scoped vote block is one line
    // of three statements (`.reg` + setp + vote: 2 instructions).
    assert!(
        m.n_instrs + 10 >= stmts && m.n_instrs <= stmts + 10,
        "decoded {} of about {stmts} instruction lines",
        m.n_instrs
    );
}

#[test]
fn unknown_opcode_is_a_load_error_naming_it() {
    let src = format!(
        "{HEAD}.visible .entry k(\n\t.param .align 8 .b8 k_param_0[16]\n)\n{{\n\t.reg .b32 %r<4>;\n\tpopc.b32 %r1, %r2;\n\tret;\n}}\n"
    );
    let e = ir::load(&src).unwrap_err();
    assert!(e.contains("popc.b32") && e.contains("entry k"), "{e}");
    // An unsupported form of a known opcode is rejected too (f16 add).
    let src = src.replace("popc.b32 %r1, %r2", "add.rn.f16 %r1, %r2, %r3");
    let e = ir::load(&src).unwrap_err();
    assert!(e.contains("add.rn.f16"), "{e}");
}

#[test]
fn planted_out_of_bounds_global_store_is_caught_by_memcheck() {
    // 32 threads store tid to out[tid]; the buffer holds 16 u32.
    let m = module(
        "\tld.param.b64 %rd1, [k_param_0];\n\tmov.u32 %r1, %tid.x;\n\tmul.wide.u32 %rd2, %r1, 4;\n\tadd.s64 %rd3, %rd1, %rd2;\n\tst.b32 [%rd3], %r1;\n\tret;",
    );
    let mut out = vec![0u32; 64];
    let base = out.as_mut_ptr() as u64;
    let e = run(&m, 32, 0, [base, 0], Some(vec![(base, 64)])).unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.kind, SimErrorKind::Memcheck, "{e}");
    assert_eq!(e.thread, Some([16, 0, 0]), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("st.b32") && s.contains("out-of-bounds global store"),
        "{s}"
    );
    // The threads before the culprit did store.
    assert_eq!(&out[..16], &(0..16).collect::<Vec<u32>>()[..]);
    assert!(out[16..].iter().all(|&v| v == 0));
}

#[test]
fn planted_shared_race_is_reported_with_both_sites() {
    // Each thread writes its word, then (no barrier) reads the word of the thread 32 ahead:
    // warp 1 later overwrites a word warp 0 read in the same epoch.
    let m = module(
        "\tmov.u32 %r1, dyn_smem;\n\tmov.u32 %r2, %tid.x;\n\tshl.b32 %r3, %r2, 2;\n\tadd.s32 %r4, %r1, %r3;\n\tst.shared.u32 [%r4], %r2;\n\tadd.s32 %r5, %r2, 32;\n\tand.b32 %r6, %r5, 63;\n\tshl.b32 %r7, %r6, 2;\n\tadd.s32 %r8, %r1, %r7;\n\tld.shared.u32 %r9, [%r8];\n\tret;",
    );
    let e = run(&m, 64, 256, [0x10000, 0], None).unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.kind, SimErrorKind::Race, "{e}");
    let s = e.to_string();
    assert!(
        s.contains("st.shared.u32") && s.contains("ld.shared.u32"),
        "both sites: {s}"
    );
    assert!(s.contains("warp 0") && s.contains("warp 1"), "{s}");
    // With a barrier between the store and the load, it is clean.
    let m = module(
        "\tmov.u32 %r1, dyn_smem;\n\tmov.u32 %r2, %tid.x;\n\tshl.b32 %r3, %r2, 2;\n\tadd.s32 %r4, %r1, %r3;\n\tst.shared.u32 [%r4], %r2;\n\tbar.sync 0;\n\tadd.s32 %r5, %r2, 32;\n\tand.b32 %r6, %r5, 63;\n\tshl.b32 %r7, %r6, 2;\n\tadd.s32 %r8, %r1, %r7;\n\tld.shared.u32 %r9, [%r8];\n\tret;",
    );
    run(&m, 64, 256, [0x10000, 0], None).unwrap();
}

#[test]
fn planted_divergent_shuffle_is_an_error_not_a_hang() {
    // Lanes < 16 shuffle at one instruction, the others at another.
    let m = module(
        "\tmov.u32 %r1, %tid.x;\n\tsetp.lt.u32 %p1, %r1, 16;\n\t@%p1 bra $L_a;\n\tshfl.sync.bfly.b32 %r2, %r1, 1, 0x1f, 0xffffffff;\n\tret;\n$L_a:\n\tshfl.sync.bfly.b32 %r3, %r1, 1, 0x1f, 0xffffffff;\n\tret;",
    );
    let e = run(&m, 32, 0, [0x10000, 0], None).unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.kind, SimErrorKind::Collective, "{e}");
    assert!(
        e.to_string()
            .contains("warp 0 are at different collectives"),
        "{e}"
    );
    // A shuffle some lanes skip (they return) is an error too.
    let m = module(
        "\tmov.u32 %r1, %tid.x;\n\tsetp.lt.u32 %p1, %r1, 16;\n\t@%p1 bra $L_a;\n\tshfl.sync.bfly.b32 %r2, %r1, 1, 0x1f, 0xffffffff;\n$L_a:\n\tret;",
    );
    let e = run(&m, 32, 0, [0x10000, 0], None).unwrap_err();
    assert_eq!(e.kind, SimErrorKind::Collective, "{e}");
    assert!(e.to_string().contains("16 arrived, 16 returned"), "{e}");
}

#[test]
fn planted_missing_cp_async_wait_group_is_a_race() {
    // Each thread copies 16 bytes into its slot, commits, meets the others at a barrier and
    // reads its neighbour's slot, but never waits for its group.
    let body = |wait: &str| {
        format!(
            "\tld.param.b64 %rd1, [k_param_0];\n\tmov.u32 %r1, dyn_smem;\n\tmov.u32 %r2, %tid.x;\n\tshl.b32 %r3, %r2, 4;\n\tadd.s32 %r4, %r1, %r3;\n\tmul.wide.u32 %rd2, %r2, 16;\n\tadd.s64 %rd3, %rd1, %rd2;\n\tmov.b32 %r5, 16;\n\tcp.async.cg.shared.global [%r4], [%rd3], 16, %r5;\n\tcp.async.commit_group;\n{wait}\tbar.sync 0;\n\tadd.s32 %r6, %r2, 1;\n\tand.b32 %r7, %r6, 31;\n\tshl.b32 %r8, %r7, 4;\n\tadd.s32 %r9, %r1, %r8;\n\tld.shared.u32 %r10, [%r9];\n\tld.param.b64 %rd4, [k_param_0+8];\n\tmul.wide.u32 %rd5, %r2, 4;\n\tadd.s64 %rd6, %rd4, %rd5;\n\tst.b32 [%rd6], %r10;\n\tret;"
        )
    };
    let src: Vec<u32> = (0..32 * 4).map(|i| i * 7 + 1).collect();
    let mut out = vec![u32::MAX; 32];
    let p = [src.as_ptr() as u64, out.as_mut_ptr() as u64];
    let e = run(&module(&body("")), 32, 512, p, None).unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.kind, SimErrorKind::Race, "{e}");
    let s = e.to_string();
    assert!(
        s.contains("un-waited cp.async")
            && s.contains("cp.async.cg.shared.global")
            && s.contains("ld.shared.u32"),
        "{s}"
    );
    // With the wait it is clean, and the data arrived.
    run(
        &module(&body("\tcp.async.wait_group 0;\n")),
        32,
        512,
        p,
        None,
    )
    .unwrap();
    for t in 0..32 {
        assert_eq!(out[t], src[4 * ((t + 1) % 32)], "thread {t}");
    }
}

#[test]
fn planted_params_size_mismatch_names_the_declaration() {
    // add_f32 takes a 32-byte struct; pass 24 bytes.
    let p = [0u64; 3];
    // SAFETY: the launch fails before any thread runs.
    let e = unsafe {
        ptx::launch(
            "add_f32",
            [1, 1, 1],
            [32, 1, 1],
            0,
            &p,
            PtxOptions::default(),
            None,
        )
    }
    .unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.kind, SimErrorKind::Params, "{e}");
    assert!(
        e.to_string().contains("24 bytes") && e.to_string().contains("add_f32_param_0[32]"),
        "{e}"
    );
}

#[test]
fn trap_and_partial_barrier_name_kernel_block_and_thread() {
    let m = module("\tmov.u32 %r1, %tid.x;\n\tsetp.eq.b32 %p1, %r1, 5;\n\t@%p1 bra $L_t;\n\tret;\n$L_t:\n\ttrap;\n\tret;");
    let e = run(&m, 32, 0, [0x10000, 0], None).unwrap_err();
    assert_eq!(
        (e.kind, e.thread),
        (SimErrorKind::Trap, Some([5, 0, 0])),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("kernel `k` block (0,0,0) thread (5,0,0)"),
        "{e}"
    );
    let m = module("\tmov.u32 %r1, %tid.x;\n\tsetp.lt.u32 %p1, %r1, 40;\n\t@%p1 bra $L_t;\n\tbar.sync 0;\n$L_t:\n\tret;");
    let e = run(&m, 64, 0, [0x10000, 0], None).unwrap_err();
    assert_eq!(e.kind, SimErrorKind::Barrier, "{e}");
    assert!(e.to_string().contains("24 arrived, 40 returned"), "{e}");
}

/// CuTe's SM80 16x8x16 bf16 MMA traits as facts: (thread, value) → index in a column-major
/// tile. A: ((4,8),(2,2,2)):((32,1),(16,8,128)) over M×K = 16×16; B: ((4,8),(2,2)):((16,1),
/// (8,64)) over N×K = 8×16; C: ((4,8),(2,2)):((32,1),(16,8)) over M×N = 16×8. Value v of a
/// lane is element v of its fragment registers (two bf16 per 32-bit register, low half first).
fn cute(lane: usize, v: usize, tv_shape: &[usize], tv_stride: &[usize]) -> usize {
    // Thread mode (4, 8): t0 = lane % 4, t1 = lane / 4; value mode: mixed radix of v.
    let coords = [lane % 4, lane / 4];
    let mut idx = coords[0] * tv_stride[0] + coords[1] * tv_stride[1];
    let mut rest = v;
    for (i, &s) in tv_shape.iter().enumerate() {
        idx += (rest % s) * tv_stride[2 + i];
        rest /= s;
    }
    idx
}

#[test]
fn mma_fragments_follow_the_sm80_16x8x16_layouts() {
    let mut rng = Rng::new("mma_layout");
    let m = {
        let mut body = String::from("\tld.param.b64 %rd1, [k_param_0];\n\tld.param.b64 %rd2, [k_param_0+8];\n\tmov.u32 %r1, %tid.x;\n\tmul.wide.u32 %rd3, %r1, 40;\n\tadd.s64 %rd4, %rd1, %rd3;\n");
        for i in 0..10 {
            body += &format!("\tld.b32 %r{}, [%rd4+{}];\n", i + 2, 4 * i);
        }
        body += "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%r12,%r13,%r14,%r15}, {%r2,%r3,%r4,%r5}, {%r6,%r7}, {%r8,%r9,%r10,%r11};\n\tmul.wide.u32 %rd5, %r1, 16;\n\tadd.s64 %rd6, %rd2, %rd5;\n\tst.b32 [%rd6], %r12;\n\tst.b32 [%rd6+4], %r13;\n\tst.b32 [%rd6+8], %r14;\n\tst.b32 [%rd6+12], %r15;\n\tret;";
        module(&body)
    };
    // Small integers: every product and sum is exact, so the check is exact.
    let a: Vec<f32> = (0..256).map(|_| (rng.u32() % 9) as f32 - 4.0).collect(); // [m][k]
    let b: Vec<f32> = (0..128).map(|_| (rng.u32() % 9) as f32 - 4.0).collect(); // [k][n]
    let c: Vec<f32> = (0..128).map(|_| (rng.u32() % 100) as f32).collect(); // [m][n]
    let bf = |x: f32| x.to_bits() >> 16;
    let mut frag = vec![0u32; 32 * 10];
    for lane in 0..32 {
        for v in 0..8 {
            let i = cute(lane, v, &[2, 2, 2], &[32, 1, 16, 8, 128]);
            let (mm, k) = (i % 16, i / 16);
            frag[lane * 10 + v / 2] |= bf(a[mm * 16 + k]) << (16 * (v % 2));
        }
        for v in 0..4 {
            let i = cute(lane, v, &[2, 2], &[16, 1, 8, 64]);
            let (n, k) = (i % 8, i / 8);
            frag[lane * 10 + 4 + v / 2] |= bf(b[k * 8 + n]) << (16 * (v % 2));
        }
        for v in 0..4 {
            let i = cute(lane, v, &[2, 2], &[32, 1, 16, 8]);
            let (mm, n) = (i % 16, i / 16);
            frag[lane * 10 + 6 + v] = c[mm * 8 + n].to_bits();
        }
    }
    let mut out = vec![f32::NAN; 32 * 4];
    run(
        &m,
        32,
        0,
        [frag.as_ptr() as u64, out.as_mut_ptr() as u64],
        None,
    )
    .unwrap();
    for lane in 0..32 {
        for v in 0..4 {
            let i = cute(lane, v, &[2, 2], &[32, 1, 16, 8]);
            let (mm, n) = (i % 16, i / 16);
            let want = c[mm * 8 + n] + (0..16).map(|k| a[mm * 16 + k] * b[k * 8 + n]).sum::<f32>();
            assert_eq!(
                out[lane * 4 + v],
                want,
                "lane {lane} value {v} = D[{mm}][{n}]"
            );
        }
    }
}

#[test]
fn counters_see_coalescing_and_bank_conflicts() {
    // 32 lanes: a coalesced u32 load (4 sectors), a strided one (stride 128 B: 32 sectors),
    // a conflict-free shared store and one with stride 32 words (32-way conflict).
    let m = module(
        "\tld.param.b64 %rd1, [k_param_0];\n\tmov.u32 %r1, %tid.x;\n\tmul.wide.u32 %rd2, %r1, 4;\n\tadd.s64 %rd3, %rd1, %rd2;\n\tld.b32 %r2, [%rd3];\n\tmul.wide.u32 %rd4, %r1, 128;\n\tadd.s64 %rd5, %rd1, %rd4;\n\tld.b32 %r3, [%rd5];\n\tmov.u32 %r4, dyn_smem;\n\tshl.b32 %r5, %r1, 2;\n\tadd.s32 %r6, %r4, %r5;\n\tst.shared.u32 [%r6], %r2;\n\tbar.sync 0;\n\tshl.b32 %r7, %r1, 7;\n\tadd.s32 %r8, %r4, %r7;\n\tst.shared.u32 [%r8], %r3;\n\tret;",
    );
    let buf = vec![0u32; 32 * 32 + 64];
    let bytes: Vec<u8> = [(buf.as_ptr() as u64 + 64) & !63, 0]
        .iter()
        .flat_map(|v: &u64| v.to_le_bytes())
        .collect();
    let mut c = Counters::default();
    // SAFETY: the kernel reads inside `buf` and writes shared memory only.
    unsafe {
        ptx::launch_bytes(
            &m,
            "k",
            [1, 1, 1],
            [32, 1, 1],
            4096,
            &bytes,
            8,
            PtxOptions::default(),
            Some(&mut c),
        )
    }
    .unwrap();
    eprintln!("{}", c.summary());
    assert_eq!(c.global[&ptx::IClass::LdGlobal], (2, 4 + 32));
    assert_eq!(c.shared[&ptx::IClass::StShared], (2, 1 + 32));
    assert_eq!(c.instrs.values().sum::<u64>(), 32 * 17);
    assert_eq!(c.barriers, 1);
}

/// A native body that differs from `add_f32` in one element: x + y, except out[37] = x.
unsafe fn add_but_one(p: dfrt_kernels::elementwise::AddParams) {
    use dfrt_kernels::gpu::{block_dim_x, block_idx_x, thread_idx_x};
    let i = (block_idx_x() * block_dim_x() + thread_idx_x()) as usize;
    if i < p.n as usize {
        let (x, y) = (*(p.x as *const f32).add(i), *(p.y as *const f32).add(i));
        *(p.out as *mut f32).add(i) = if i == 37 { x } else { x + y };
    }
}

#[test]
fn dual_mode_reports_the_first_differing_byte() {
    use dfrt_kernels::sim::{launch_with, Engine, Kernel, Options};
    use dfrt_kernels::Launch;
    let mut rng = Rng::new("dual");
    let n = 300;
    let (x, y) = (rng.vec(n, 1.0, 2.0), rng.vec(n, 1.0, 2.0));
    let mut out = vec![f32::NAN; n];
    let p = dfrt_kernels::elementwise::AddParams {
        x: x.as_ptr() as u64,
        y: y.as_ptr() as u64,
        out: out.as_mut_ptr() as u64,
        n: n as u32,
    };
    let d = p.dims();
    let opts = Options {
        timeout: std::time::Duration::from_secs(3),
        engine: Engine::Dual,
    };
    // The real kernel: both engines agree.
    // SAFETY: x, y and out hold n f32.
    unsafe {
        launch_with(
            opts,
            d.grid,
            d.block,
            d.dyn_smem,
            dfrt_kernels::elementwise::add_f32,
            p,
        )
    }
    .unwrap();
    for i in 0..n {
        assert_eq!(out[i], x[i] + y[i], "out[{i}]");
    }
    // A native body that differs at element 37: the PTX run (the real add_f32) disagrees.
    let k = Kernel {
        name: "add_f32",
        f: add_but_one,
        independent: true,
    };
    // SAFETY: as above.
    let e = unsafe { launch_with(opts, d.grid, d.block, d.dyn_smem, k, p) }.unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.kind, SimErrorKind::Mismatch, "{e}");
    let s = e.to_string();
    assert!(
        s.contains("kernel `add_f32`") && s.contains("params field at byte 16"),
        "{s}"
    );
    // The first differing byte is in element 37 (byte 148..152; f32 low bytes may agree).
    let off: usize = s
        .split("offset ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((148..152).contains(&off), "{s}");
}
