//! The embedded PTX matches the crate: every kernel in `KERNELS` is an entry point and nothing
//! else is; the params structs keep the layout the host passes by value.

use dfrt_kernels::{
    calib::*, elem::Bf16, elementwise::*, layout::*, norm::*, rope::*, HOT_KERNELS, KERNELS, PTX,
};

#[test]
fn ptx_entries_are_the_kernel_list() {
    let mut entries: Vec<&str> = PTX
        .lines()
        .filter_map(|l| l.strip_prefix(".visible .entry "))
        .map(|l| l.trim_end_matches('(').trim())
        .collect();
    entries.sort();
    let mut listed = KERNELS.to_vec();
    listed.sort();
    assert_eq!(
        entries, listed,
        "PTX entry points vs dfrt_kernels::KERNELS (run `cargo xtask ptx`?)"
    );
    for h in HOT_KERNELS {
        assert!(KERNELS.contains(h), "hot kernel {h} is not in KERNELS");
    }
    assert!(PTX.contains(".target sm_90"), "PTX not built for sm_90");
    assert!(
        PTX.contains(".extern .shared .align 16 .b8 dyn_smem[]"),
        "dynamic smem symbol missing"
    );
    // Register arrays that spill to local memory show up as .local; none of our kernels need it.
    assert!(!PTX.contains(".local"), "PTX uses local memory");
}

#[test]
fn params_layouts_are_stable() {
    // The host passes these by value as the single kernel parameter; a layout change must be
    // deliberate (and the host launcher updated with it).
    use std::mem::{align_of, size_of};
    assert_eq!(
        (size_of::<RmsNormParams>(), align_of::<RmsNormParams>()),
        (40, 8)
    );
    assert_eq!(
        (
            size_of::<LayerNormModParams>(),
            align_of::<LayerNormModParams>()
        ),
        (48, 8)
    );
    assert_eq!((size_of::<RopeParams>(), align_of::<RopeParams>()), (56, 8));
    assert_eq!((size_of::<GeluParams>(), align_of::<GeluParams>()), (24, 8));
    assert_eq!(
        (
            size_of::<GatedResidualParams>(),
            align_of::<GatedResidualParams>()
        ),
        (48, 8)
    );
    // The bf16 variants pass the same struct.
    assert_eq!(size_of::<Bf16<RmsNormParams>>(), size_of::<RmsNormParams>());
    let sizes = [
        ("LayerNormParams", size_of::<LayerNormParams>(), 48),
        ("SiluParams", size_of::<SiluParams>(), 24),
        ("AddParams", size_of::<AddParams>(), 32),
        ("ModulationParams", size_of::<ModulationParams>(), 40),
        ("SinusoidParams", size_of::<SinusoidParams>(), 32),
        ("QkNormRopeParams", size_of::<QkNormRopeParams>(), 88),
        ("PatchifyParams", size_of::<PatchifyParams>(), 40),
        ("UnpatchifyParams", size_of::<UnpatchifyParams>(), 40),
        ("CopyRowsParams", size_of::<CopyRowsParams>(), 32),
        ("HeadCopyJob", size_of::<HeadCopyJob>(), 48),
        ("HeadCopyShape", size_of::<HeadCopyShape>(), 24),
        ("KvWriteParams", size_of::<KvWriteParams>(), 72),
        ("KvCompactParams", size_of::<KvCompactParams>(), 40),
        ("CalibSeg", size_of::<CalibSeg>(), 24),
        ("CalibMassParams", size_of::<CalibMassParams>(), 64),
        ("CalibMeanParams", size_of::<CalibMeanParams>(), 24),
        (
            "AttnBiasParams",
            size_of::<dfrt_kernels::attn_bias::AttnBiasParams>(),
            56,
        ),
    ];
    for (name, got, want) in sizes {
        assert_eq!(got, want, "size of {name}");
    }
}

/// The params-ABI contract, derived from the PTX: every entry's `.param .align A .b8 x[N]`
/// equals its params struct's size and alignment (the PTX engine checks it per launch too).
#[test]
fn params_abi_matches_the_ptx_param_declarations() {
    use dfrt_kernels::attention::*;
    use dfrt_kernels::testk::*;
    use dfrt_kernels::Entry;
    fn abi<P: Entry>(m: &dfrt_kernels::ptx::ir::Module) {
        let e = m
            .entries
            .get(P::NAME)
            .unwrap_or_else(|| panic!("{} is not in the PTX", P::NAME));
        let got = (std::mem::size_of::<P>(), std::mem::align_of::<P>());
        assert_eq!(
            got,
            (e.param_size as usize, e.param_align as usize),
            "{}: (size, align) of the params struct vs the PTX",
            P::NAME
        );
    }
    let m = dfrt_kernels::ptx::module().unwrap_or_else(|e| panic!("{e}"));
    abi::<Bf16<AddParams>>(m);
    abi::<AddParams>(m);
    abi::<AttnBf16D128>(m);
    abi::<AttnBf16D128W8>(m);
    abi::<AttnBf16D64>(m);
    abi::<AttnF32>(m);
    abi::<Bf16<dfrt_kernels::attn_bias::AttnBiasParams>>(m);
    abi::<dfrt_kernels::attn_bias::AttnBiasParams>(m);
    abi::<Bf16<CalibMassParams>>(m);
    abi::<CalibMassParams>(m);
    abi::<CalibMeanParams>(m);
    abi::<Bf16<CopyRowsParams>>(m);
    abi::<CopyRowsParams>(m);
    abi::<Bf16<GatedResidualParams>>(m);
    abi::<GatedResidualParams>(m);
    abi::<Bf16<GeluParams>>(m);
    abi::<GeluParams>(m);
    abi::<Bf16<KvCompactParams>>(m);
    abi::<KvCompactParams>(m);
    abi::<Bf16<KvWriteParams>>(m);
    abi::<KvWriteParams>(m);
    abi::<Bf16<LayerNormParams>>(m);
    abi::<LayerNormParams>(m);
    abi::<Bf16<LayerNormModParams>>(m);
    abi::<LayerNormModParams>(m);
    abi::<Bf16<ModulationParams>>(m);
    abi::<ModulationParams>(m);
    abi::<Bf16<PatchifyParams>>(m);
    abi::<PatchifyParams>(m);
    abi::<Bf16<QkNormRopeParams>>(m);
    abi::<QkNormRopeParams>(m);
    abi::<Bf16<RmsNormParams>>(m);
    abi::<RmsNormParams>(m);
    abi::<Bf16<RopeParams>>(m);
    abi::<RopeParams>(m);
    abi::<Bf16<SiluParams>>(m);
    abi::<SiluParams>(m);
    abi::<Bf16<SinusoidParams>>(m);
    abi::<SinusoidParams>(m);
    abi::<CpAsyncParams>(m);
    abi::<DivergentBarrierParams>(m);
    abi::<DivergentShflParams>(m);
    abi::<IndependentBarrierParams>(m);
    abi::<MmaTileParams>(m);
    abi::<SmemOobParams>(m);
    abi::<WarpOpsParams>(m);
    abi::<Bf16<UnpatchifyParams>>(m);
    abi::<UnpatchifyParams>(m);
    assert_eq!(m.entries.len(), 48, "an entry without an ABI check");
}
