//! Parser and decoder: PTX text to a typed IR for exactly the subset the committed PTX uses.
//! Anything outside it is a load-time error naming the instruction and its line.

use std::collections::HashMap;

mod decode;
mod instr;

pub use decode::load;

/// A register index into a thread's register file (all classes share one file of u64).
pub type Reg = u16;

/// A source operand: a register or an immediate (floats already as their bits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Src {
    R(Reg),
    I(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Pred,
    B16,
    B32,
    B64,
}

impl Class {
    pub fn mask(self) -> u64 {
        match self {
            Class::Pred => 1,
            Class::B16 => 0xffff,
            Class::B32 => 0xffff_ffff,
            Class::B64 => u64::MAX,
        }
    }
}

/// Integer ALU ops (unsigned view; `w` masks the result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IOp {
    Add,
    Sub,
    MulLo,
    MulHiU32,
    MulWideU32,
    And,
    Or,
    Xor,
    Shl,
    ShrU,
    DivU,
    RemU,
    MinU,
    MaxU,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Un {
    NegS32,
    NegF64,
    Ex2,
    Rcp,
    Sqrt,
    CvtF64F32,
    CvtF32F64,
    CvtF32U32,
    CvtF64S64,
    CvtRziS64F64,
    /// Plain truncation / zero extension (integer cvt and mov), masked to the width.
    Mov,
    /// Upper half of the source (`mov.b64 {_, %r}` / `mov.b32 {_, %h}`), `u32` = bits shifted.
    Hi(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// The unordered float comparisons: true when either operand is NaN, or as the ordered one.
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    /// Both operands are numbers (not NaN).
    Num,
    /// Either operand is NaN.
    Nan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CTy {
    U16,
    U32,
    U64,
    F32,
    F64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Tid(usize),
    Ntid(usize),
    Ctaid(usize),
    Nctaid(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Bfly,
    Idx,
    Up,
    Down,
}

/// Coarse instruction classes for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IClass {
    Int,
    Fp32,
    Fp64,
    Sfu,
    Mov,
    Control,
    LdParam,
    LdGlobal,
    StGlobal,
    LdShared,
    StShared,
    Shfl,
    Vote,
    Mma,
    Ldmatrix,
    CpAsync,
    Barrier,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    I {
        op: IOp,
        mask: u64,
        d: Reg,
        a: Src,
        b: Src,
    },
    /// mad.lo: d = a * b + c
    Mad {
        mask: u64,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    F32 {
        op: FOp,
        d: Reg,
        a: Src,
        b: Src,
    },
    F64 {
        op: FOp,
        d: Reg,
        a: Src,
        b: Src,
    },
    U {
        op: Un,
        mask: u64,
        d: Reg,
        a: Src,
    },
    Pack16 {
        d: Reg,
        lo: Reg,
        hi: Reg,
    },
    CvtBf16x2 {
        d: Reg,
        hi: Src,
        lo: Src,
    },
    Bfe {
        d: Reg,
        a: Src,
        pos: u32,
        len: u32,
    },
    Setp {
        cmp: Cmp,
        ty: CTy,
        d: Reg,
        a: Src,
        b: Src,
    },
    Selp {
        mask: u64,
        d: Reg,
        a: Src,
        b: Src,
        p: Reg,
    },
    Sreg {
        d: Reg,
        s: Special,
    },
    Bra {
        guard: Option<(Reg, bool)>,
        target: u32,
    },
    Brx {
        idx: Reg,
        targets: Vec<u32>,
    },
    LdParam {
        d: Reg,
        off: u32,
        size: u32,
    },
    Ld {
        d: Reg,
        d2: Option<Reg>,
        base: Reg,
        off: i64,
        size: u32,
    },
    St {
        base: Reg,
        off: i64,
        size: u32,
        v: Reg,
    },
    LdShared {
        d: Reg,
        addr: Reg,
        size: u32,
    },
    StShared {
        addr: Reg,
        size: u32,
        v: Reg,
    },
    Shfl {
        mode: ShflMode,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    Ballot {
        d: Reg,
        p: Reg,
        mask: Src,
    },
    Mma {
        d: [Reg; 4],
        a: [Reg; 4],
        b: [Reg; 2],
        c: [Reg; 4],
    },
    Ldmatrix {
        n: u32,
        trans: bool,
        d: [Reg; 4],
        addr: Reg,
    },
    CpAsync {
        dst: Reg,
        src: Reg,
        src_size: Src,
    },
    Commit,
    Wait(u32),
    Bar,
    /// A call to a `.noreturn` stub that traps (the Rust panic path).
    Trap(String),
    Exit,
}

impl Op {
    pub fn class(&self) -> IClass {
        match self {
            Op::I { .. }
            | Op::Mad { .. }
            | Op::Bfe { .. }
            | Op::Setp {
                ty: CTy::U16 | CTy::U32 | CTy::U64,
                ..
            } => IClass::Int,
            Op::F32 { op: FOp::Div, .. } => IClass::Sfu,
            Op::F32 { .. } | Op::CvtBf16x2 { .. } | Op::Setp { ty: CTy::F32, .. } => IClass::Fp32,
            Op::F64 { .. } | Op::Setp { ty: CTy::F64, .. } => IClass::Fp64,
            Op::U {
                op: Un::Ex2 | Un::Rcp | Un::Sqrt,
                ..
            } => IClass::Sfu,
            Op::U {
                op: Un::NegF64 | Un::CvtF64F32 | Un::CvtF32F64 | Un::CvtF64S64 | Un::CvtRziS64F64,
                ..
            } => IClass::Fp64,
            Op::U { op: Un::NegS32, .. } => IClass::Int,
            Op::U {
                op: Un::CvtF32U32, ..
            } => IClass::Fp32,
            Op::U { .. } | Op::Pack16 { .. } | Op::Selp { .. } | Op::Sreg { .. } => IClass::Mov,
            Op::Bra { .. } | Op::Brx { .. } | Op::Trap(_) | Op::Exit => IClass::Control,
            Op::LdParam { .. } => IClass::LdParam,
            Op::Ld { .. } => IClass::LdGlobal,
            Op::St { .. } => IClass::StGlobal,
            Op::LdShared { .. } => IClass::LdShared,
            Op::StShared { .. } => IClass::StShared,
            Op::Shfl { .. } => IClass::Shfl,
            Op::Ballot { .. } => IClass::Vote,
            Op::Mma { .. } => IClass::Mma,
            Op::Ldmatrix { .. } => IClass::Ldmatrix,
            Op::CpAsync { .. } | Op::Commit | Op::Wait(_) => IClass::CpAsync,
            Op::Bar => IClass::Barrier,
        }
    }

    /// Warp collectives and barriers stop a thread until its warp (block) meets.
    pub fn is_meeting(&self) -> bool {
        matches!(
            self,
            Op::Shfl { .. } | Op::Ballot { .. } | Op::Mma { .. } | Op::Ldmatrix { .. } | Op::Bar
        )
    }
}

/// One decoded instruction with its source line (for reports).
#[derive(Clone, Debug)]
pub struct Instr {
    pub op: Op,
    pub line: u32,
    pub text: String,
}

/// A decoded `.entry`.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    pub param_size: u32,
    pub param_align: u32,
    pub n_regs: usize,
    pub code: Vec<Instr>,
}

/// The decoded module.
#[derive(Debug)]
pub struct Module {
    pub entries: HashMap<String, Entry>,
    /// Static instructions in all entries.
    pub n_instrs: usize,
}

/// Shared-window address of `dyn_smem` (the same base the native simulator uses).
pub const SMEM_BASE: u32 = crate::sim::ctx::SMEM_BASE;
