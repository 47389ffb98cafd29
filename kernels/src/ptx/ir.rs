//! Parser and decoder: PTX text to a typed IR for exactly the subset the committed PTX uses.
//! Anything outside it is a load-time error naming the instruction and its line.

use std::collections::HashMap;

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
    Ltu,
    Leu,
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

fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        let l = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(l);
        out.push('\n');
    }
    out
}

thread_local! {
    /// Newline offsets of the text being loaded (line numbers for reports without rescanning).
    static NEWLINES: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn line_of(_text: &str, pos: usize) -> u32 {
    NEWLINES.with(|n| n.borrow().partition_point(|&p| p < pos)) as u32 + 1
}

/// Index of the `}` closing the `{` at `open`.
fn matching_brace(t: &str, open: usize) -> Result<usize, String> {
    let mut depth = 0i32;
    for (i, c) in t[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(open + i);
                }
            }
            _ => {}
        }
    }
    Err(format!("line {}: unbalanced braces", line_of(t, open)))
}

/// Parses and decodes the whole PTX text.
pub fn load(src: &str) -> Result<Module, String> {
    let t = strip_comments(src);
    NEWLINES.with(|n| {
        *n.borrow_mut() = t
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i)
            .collect()
    });
    let mut pos = 0;
    let mut entries = HashMap::new();
    let mut funcs: HashMap<String, String> = HashMap::new();
    let mut pending: Vec<(String, String, usize, usize)> = Vec::new();
    let mut n_instrs = 0;
    while pos < t.len() {
        let rest = &t[pos..];
        let skip = rest.len() - rest.trim_start().len();
        pos += skip;
        if pos >= t.len() {
            break;
        }
        let rest = &t[pos..];
        let word_end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        let word = &rest[..word_end];
        match word {
            ".version" | ".target" | ".address_size" => {
                let nl = rest.find('\n').unwrap_or(rest.len());
                let v = rest[word_end..nl].trim();
                let ok = match word {
                    ".version" => v == "8.0",
                    ".target" => v == "sm_90",
                    _ => v == "64",
                };
                if !ok {
                    return Err(format!(
                        "line {}: unsupported `{word} {v}`",
                        line_of(&t, pos)
                    ));
                }
                pos += nl;
            }
            ".extern" => {
                let semi = rest.find(';').ok_or("unterminated .extern")?;
                let decl: Vec<&str> = rest[..semi].split_whitespace().collect();
                if decl != [".extern", ".shared", ".align", "16", ".b8", "dyn_smem[]"] {
                    return Err(format!(
                        "line {}: unsupported declaration `{}`",
                        line_of(&t, pos),
                        decl.join(" ")
                    ));
                }
                pos += semi + 1;
            }
            ".func" | ".visible" => {
                let open = rest.find(['{', ';']).ok_or("unterminated function")?;
                let header = &rest[..open];
                let name = header
                    .split_whitespace()
                    .find(|w| !w.starts_with('.'))
                    .map(|w| w.split('(').next().unwrap_or(w).to_string())
                    .ok_or_else(|| format!("line {}: function without a name", line_of(&t, pos)))?;
                if rest.as_bytes()[open] == b';' {
                    // A declaration (`.func __unnamed_1 () .noreturn;`).
                    pos += open + 1;
                    continue;
                }
                let close = matching_brace(&t, pos + open)?;
                let body = t[pos + open + 1..close].to_string();
                if header.contains(".entry") {
                    pending.push((name, header.to_string(), pos + open + 1, close));
                } else if header.contains(".noreturn") {
                    funcs.insert(name, body);
                } else {
                    return Err(format!(
                        "line {}: unsupported function `{name}`",
                        line_of(&t, pos)
                    ));
                }
                pos = close + 1;
            }
            _ => {
                return Err(format!(
                    "line {}: unsupported top-level `{word}`",
                    line_of(&t, pos)
                ));
            }
        }
    }
    // Panic stubs: a `.noreturn` function whose body only calls other stubs, traps or exits.
    // It must reach a trap.
    let mut traps: HashMap<String, bool> = HashMap::new();
    for _ in 0..4 {
        for (name, body) in &funcs {
            let mut reaches = false;
            for stmt in body.split(';').map(clean_stmt) {
                let stmt = stmt.trim();
                if stmt.is_empty() || stmt == "exit" {
                    continue;
                }
                if stmt == "trap" {
                    reaches = true;
                } else if let Some(callee) = stmt.strip_prefix("call.uni") {
                    let callee = callee
                        .trim()
                        .trim_end_matches("()")
                        .trim()
                        .trim_end_matches(',');
                    reaches |= traps.get(callee).copied().unwrap_or(false);
                } else {
                    return Err(format!("function {name}: unsupported statement `{stmt}`"));
                }
            }
            traps.insert(name.clone(), reaches);
        }
    }
    for (name, header, start, end) in pending {
        let e = decode_entry(&t, &name, &header, start, end, &traps)?;
        n_instrs += e.code.len();
        entries.insert(name, e);
    }
    Ok(Module { entries, n_instrs })
}

/// Drops leading braces (callseq blocks) from a statement.
fn clean_stmt(s: &str) -> &str {
    let mut s = s.trim();
    while let Some(r) = s.strip_prefix('{').or_else(|| s.strip_prefix('}')) {
        s = r.trim();
    }
    s
}

struct Regs {
    /// prefix → (class, first index, count)
    arrays: HashMap<String, (Class, u16, u16)>,
    /// Scalar names (`p` in a scoped block).
    named: HashMap<String, (Class, u16)>,
    next: u16,
}

impl Regs {
    fn declare(&mut self, decl: &str) -> Result<(), String> {
        // `.reg .b32 %r<16>` or `.reg .pred p`
        let w: Vec<&str> = decl.split_whitespace().collect();
        if w.len() != 3 || w[0] != ".reg" {
            return Err(format!("unsupported register declaration `{decl}`"));
        }
        let class = match w[1] {
            ".pred" => Class::Pred,
            ".b16" => Class::B16,
            ".b32" => Class::B32,
            ".b64" => Class::B64,
            c => return Err(format!("unsupported register class `{c}`")),
        };
        if let Some((pre, n)) = w[2].split_once('<') {
            let n: u16 = n
                .trim_end_matches('>')
                .parse()
                .map_err(|_| format!("bad `{decl}`"))?;
            self.arrays.insert(pre.to_string(), (class, self.next, n));
            self.next = self.next.checked_add(n).ok_or("too many registers")?;
        } else {
            self.named.insert(w[2].to_string(), (class, self.next));
            self.next += 1;
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<(Class, Reg)> {
        if let Some(&r) = self.named.get(name) {
            return Some(r);
        }
        let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
        let pre = &name[..name.len() - digits.len()];
        let i: u16 = digits.parse().ok()?;
        let &(c, base, n) = self.arrays.get(pre)?;
        (i < n).then_some((c, base + i))
    }
}

/// Splits operands at top-level commas (not inside `{}` or `[]`).
fn split_operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn parse_int(s: &str) -> Option<u64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let v = if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()?
    } else {
        s.parse::<u64>().ok()?
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

struct Dec<'a> {
    regs: Regs,
    labels: HashMap<String, u32>,
    brx_tables: HashMap<String, Vec<String>>,
    traps: &'a HashMap<String, bool>,
    param_name: String,
}

impl Dec<'_> {
    fn reg(&self, s: &str, want: &[Class]) -> Result<Reg, String> {
        match self.regs.get(s) {
            Some((c, r)) if want.contains(&c) => Ok(r),
            Some((c, _)) => Err(format!("register {s} is {c:?}, expected {want:?}")),
            None => Err(format!("unknown register `{s}`")),
        }
    }

    fn src(&self, s: &str, want: &[Class]) -> Result<Src, String> {
        if let Some(h) = s.strip_prefix("0f") {
            if h.len() == 8 {
                return u32::from_str_radix(h, 16)
                    .map(|v| Src::I(v as u64))
                    .map_err(|e| e.to_string());
            }
        }
        if let Some(h) = s.strip_prefix("0d") {
            if h.len() == 16 {
                return u64::from_str_radix(h, 16)
                    .map(Src::I)
                    .map_err(|e| e.to_string());
            }
        }
        if let Some(v) = parse_int(s) {
            let m = want.iter().map(|c| c.mask()).max().unwrap_or(u64::MAX);
            return Ok(Src::I(v & m));
        }
        self.reg(s, want).map(Src::R)
    }

    fn imm(&self, s: &str) -> Result<u64, String> {
        parse_int(s).ok_or_else(|| format!("expected an immediate, got `{s}`"))
    }

    /// `{%a, %b, ...}` → registers.
    fn vec(&self, s: &str, n: usize, want: &[Class]) -> Result<Vec<Reg>, String> {
        let inner = s
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .ok_or_else(|| format!("expected a vector operand, got `{s}`"))?;
        let v: Vec<&str> = inner.split(',').map(str::trim).collect();
        if v.len() != n {
            return Err(format!("expected {n} registers in `{s}`"));
        }
        v.iter().map(|r| self.reg(r, want)).collect()
    }

    /// `[%rd+8]` / `[%rd]` → (base, offset).
    fn addr(&self, s: &str, want: &[Class]) -> Result<(Reg, i64), String> {
        let inner = s
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .ok_or_else(|| format!("expected an address, got `{s}`"))?;
        match inner.split_once('+') {
            Some((b, o)) => Ok((self.reg(b.trim(), want)?, self.imm(o.trim())? as i64)),
            None => Ok((self.reg(inner.trim(), want)?, 0)),
        }
    }

    fn label(&self, s: &str) -> Result<u32, String> {
        self.labels
            .get(s)
            .copied()
            .ok_or_else(|| format!("unknown label `{s}`"))
    }

    fn decode(
        &self,
        opcode: &str,
        guard: Option<(Reg, bool)>,
        ops: &[String],
    ) -> Result<Op, String> {
        use Class::*;
        let n = ops.len();
        let o = |i: usize| -> &str { ops.get(i).map(|s| s.as_str()).unwrap_or("") };
        let want = |k: usize| -> Result<(), String> {
            if n == k {
                Ok(())
            } else {
                Err(format!("expected {k} operands, got {n}"))
            }
        };
        if guard.is_some() && opcode != "bra" {
            return Err("only `bra` may be predicated".into());
        }
        let parts: Vec<&str> = opcode.split('.').collect();
        let base = parts[0];
        let cls = |ty: &str| -> Result<(Class, u64), String> {
            Ok(match ty {
                "s16" | "u16" | "b16" => (B16, 0xffff),
                "s32" | "u32" | "b32" | "f32" => (B32, 0xffff_ffff),
                "s64" | "u64" | "b64" | "f64" => (B64, u64::MAX),
                "pred" => (Pred, 1),
                _ => return Err(format!("unsupported type .{ty}")),
            })
        };
        let iop = |name: &str| -> Option<IOp> {
            Some(match name {
                "add" => IOp::Add,
                "sub" => IOp::Sub,
                "and" => IOp::And,
                "or" => IOp::Or,
                "xor" => IOp::Xor,
                "shl" => IOp::Shl,
                _ => return None,
            })
        };
        let op = match (base, &parts[1..]) {
            ("add" | "sub" | "and" | "or" | "xor" | "shl", [ty]) if !ty.starts_with('f') => {
                want(3)?;
                let (c, mask) = cls(ty)?;
                Op::I {
                    op: iop(base).unwrap(),
                    mask,
                    d: self.reg(o(0), &[c])?,
                    a: self.src(o(1), &[c])?,
                    b: self.src(o(2), &[c])?,
                }
            }
            ("shr", ["u32" | "u64"]) | ("div" | "rem" | "min" | "max", ["u16" | "u32" | "u64"]) => {
                want(3)?;
                let (c, mask) = cls(parts[1])?;
                let op = match base {
                    "shr" => IOp::ShrU,
                    "div" => IOp::DivU,
                    "rem" => IOp::RemU,
                    "min" => IOp::MinU,
                    _ => IOp::MaxU,
                };
                Op::I {
                    op,
                    mask,
                    d: self.reg(o(0), &[c])?,
                    a: self.src(o(1), &[c])?,
                    b: self.src(o(2), &[c])?,
                }
            }
            ("mul", ["lo", ty @ ("s16" | "s32" | "s64")]) => {
                want(3)?;
                let (c, mask) = cls(ty)?;
                Op::I {
                    op: IOp::MulLo,
                    mask,
                    d: self.reg(o(0), &[c])?,
                    a: self.src(o(1), &[c])?,
                    b: self.src(o(2), &[c])?,
                }
            }
            ("mul", ["hi", "u32"]) => {
                want(3)?;
                Op::I {
                    op: IOp::MulHiU32,
                    mask: B32.mask(),
                    d: self.reg(o(0), &[B32])?,
                    a: self.src(o(1), &[B32])?,
                    b: self.src(o(2), &[B32])?,
                }
            }
            ("mul", ["wide", "u32"]) => {
                want(3)?;
                Op::I {
                    op: IOp::MulWideU32,
                    mask: u64::MAX,
                    d: self.reg(o(0), &[B64])?,
                    a: self.src(o(1), &[B32])?,
                    b: self.src(o(2), &[B32])?,
                }
            }
            ("mad", ["lo", ty @ ("s32" | "s64")]) => {
                want(4)?;
                let (c, mask) = cls(ty)?;
                Op::Mad {
                    mask,
                    d: self.reg(o(0), &[c])?,
                    a: self.src(o(1), &[c])?,
                    b: self.src(o(2), &[c])?,
                    c: self.src(o(3), &[c])?,
                }
            }
            ("and" | "or", ["pred"]) => {
                want(3)?;
                Op::I {
                    op: iop(base).unwrap(),
                    mask: 1,
                    d: self.reg(o(0), &[Pred])?,
                    a: self.src(o(1), &[Pred])?,
                    b: self.src(o(2), &[Pred])?,
                }
            }
            ("add" | "sub" | "mul" | "div", ["rn", "f32"]) | ("max", ["f32"]) => {
                want(3)?;
                let op = match base {
                    "add" => FOp::Add,
                    "sub" => FOp::Sub,
                    "mul" => FOp::Mul,
                    "div" => FOp::Div,
                    _ => FOp::Max,
                };
                Op::F32 {
                    op,
                    d: self.reg(o(0), &[B32])?,
                    a: self.src(o(1), &[B32])?,
                    b: self.src(o(2), &[B32])?,
                }
            }
            ("add" | "mul", ["rn", "f64"]) => {
                want(3)?;
                let op = if base == "add" { FOp::Add } else { FOp::Mul };
                Op::F64 {
                    op,
                    d: self.reg(o(0), &[B64])?,
                    a: self.src(o(1), &[B64])?,
                    b: self.src(o(2), &[B64])?,
                }
            }
            ("neg" | "ex2" | "rcp" | "sqrt", _) => {
                want(2)?;
                let (op, c) = match &parts[1..] {
                    ["s32"] => (Un::NegS32, B32),
                    ["f64"] if base == "neg" => (Un::NegF64, B64),
                    ["approx", "ftz", "f32"] if base == "ex2" => (Un::Ex2, B32),
                    ["rn", "f32"] if base == "rcp" => (Un::Rcp, B32),
                    ["rn", "f32"] if base == "sqrt" => (Un::Sqrt, B32),
                    _ => return Err("unsupported form".into()),
                };
                Op::U {
                    op,
                    mask: c.mask(),
                    d: self.reg(o(0), &[c])?,
                    a: self.src(o(1), &[c])?,
                }
            }
            ("cvt", ["rn", "bf16x2", "f32"]) => {
                want(3)?;
                Op::CvtBf16x2 {
                    d: self.reg(o(0), &[B32])?,
                    hi: self.src(o(1), &[B32])?,
                    lo: self.src(o(2), &[B32])?,
                }
            }
            ("cvt", rest) => {
                want(2)?;
                let (op, dc, sc) = match rest {
                    ["f64", "f32"] => (Un::CvtF64F32, B64, B32),
                    ["rn", "f32", "f64"] => (Un::CvtF32F64, B32, B64),
                    ["rn", "f32", "u32"] => (Un::CvtF32U32, B32, B32),
                    ["rn", "f64", "s64"] => (Un::CvtF64S64, B64, B64),
                    ["rzi", "s64", "f64"] => (Un::CvtRziS64F64, B64, B64),
                    [d @ ("u16" | "u32" | "u64"), s @ ("u16" | "u32" | "u64")] if d != s => {
                        (Un::Mov, cls(d)?.0, cls(s)?.0)
                    }
                    _ => return Err("unsupported form".into()),
                };
                Op::U {
                    op,
                    mask: dc.mask(),
                    d: self.reg(o(0), &[dc])?,
                    a: self.src(o(1), &[sc])?,
                }
            }
            ("mov", [ty @ ("b32" | "b64" | "u32")]) => {
                want(2)?;
                let (c, mask) = cls(ty)?;
                let (d, s) = (o(0), o(1));
                if let Some(inner) = d.strip_prefix("{_,") {
                    // `mov.b64 {_, %r}, %rd` / `mov.b32 {_, %h}, %r`: the upper half.
                    let half = if c == B64 { B32 } else { B16 };
                    let dr = self.reg(inner.trim_end_matches('}').trim(), &[half])?;
                    return Ok(Op::U {
                        op: Un::Hi(if c == B64 { 32 } else { 16 }),
                        mask: half.mask(),
                        d: dr,
                        a: Src::R(self.reg(s, &[c])?),
                    });
                }
                if s.starts_with('{') && c == B32 {
                    let v = self.vec(s, 2, &[B16])?;
                    return Ok(Op::Pack16 {
                        d: self.reg(d, &[B32])?,
                        lo: v[0],
                        hi: v[1],
                    });
                }
                if *ty == "u32" {
                    let dr = self.reg(d, &[B32])?;
                    if s == "dyn_smem" {
                        return Ok(Op::U {
                            op: Un::Mov,
                            mask,
                            d: dr,
                            a: Src::I(SMEM_BASE as u64),
                        });
                    }
                    let (sr, dim) = s.split_once('.').ok_or("unsupported mov.u32 source")?;
                    let dim = match dim {
                        "x" => 0,
                        "y" => 1,
                        "z" => 2,
                        _ => return Err(format!("unsupported special register `{s}`")),
                    };
                    let sp = match sr {
                        "%tid" => Special::Tid(dim),
                        "%ntid" => Special::Ntid(dim),
                        "%ctaid" => Special::Ctaid(dim),
                        "%nctaid" => Special::Nctaid(dim),
                        _ => return Err(format!("unsupported special register `{s}`")),
                    };
                    return Ok(Op::Sreg { d: dr, s: sp });
                }
                Op::U {
                    op: Un::Mov,
                    mask,
                    d: self.reg(d, &[c])?,
                    a: self.src(s, &[c])?,
                }
            }
            ("bfe", ["u32"]) => {
                want(4)?;
                Op::Bfe {
                    d: self.reg(o(0), &[B32])?,
                    a: self.src(o(1), &[B32])?,
                    pos: self.imm(o(2))? as u32,
                    len: self.imm(o(3))? as u32,
                }
            }
            ("setp", [cmp, ty]) => {
                want(3)?;
                let cmp = match *cmp {
                    "eq" => Cmp::Eq,
                    "ne" => Cmp::Ne,
                    "lt" => Cmp::Lt,
                    "le" => Cmp::Le,
                    "gt" => Cmp::Gt,
                    "ge" => Cmp::Ge,
                    "ltu" => Cmp::Ltu,
                    "leu" => Cmp::Leu,
                    "nan" => Cmp::Nan,
                    _ => return Err("unsupported comparison".into()),
                };
                let cty = match *ty {
                    "b16" | "u16" => CTy::U16,
                    "b32" | "u32" => CTy::U32,
                    "b64" | "u64" => CTy::U64,
                    "f32" => CTy::F32,
                    "f64" => CTy::F64,
                    _ => return Err("unsupported type".into()),
                };
                let float = matches!(cty, CTy::F32 | CTy::F64);
                if !float && matches!(cmp, Cmp::Ltu | Cmp::Leu | Cmp::Nan) {
                    return Err("unsupported comparison for the type".into());
                }
                let c = cls(ty)?.0;
                Op::Setp {
                    cmp,
                    ty: cty,
                    d: self.reg(o(0), &[Pred])?,
                    a: self.src(o(1), &[c])?,
                    b: self.src(o(2), &[c])?,
                }
            }
            ("selp", [ty @ ("b16" | "b32" | "b64" | "f32" | "f64")]) => {
                want(4)?;
                let (c, mask) = cls(ty)?;
                Op::Selp {
                    mask,
                    d: self.reg(o(0), &[c])?,
                    a: self.src(o(1), &[c])?,
                    b: self.src(o(2), &[c])?,
                    p: self.reg(o(3), &[Pred])?,
                }
            }
            ("bra", [] | ["uni"]) => {
                want(1)?;
                Op::Bra {
                    guard,
                    target: self.label(o(0))?,
                }
            }
            ("brx", ["idx"]) => {
                want(2)?;
                let table = self
                    .brx_tables
                    .get(o(1))
                    .ok_or_else(|| format!("unknown branch table `{}`", o(1)))?;
                let targets = table
                    .iter()
                    .map(|l| self.label(l))
                    .collect::<Result<_, _>>()?;
                Op::Brx {
                    idx: self.reg(o(0), &[B32])?,
                    targets,
                }
            }
            ("call", ["uni"]) => {
                want(2)?;
                if o(1) != "()" || !self.traps.get(o(0)).copied().unwrap_or(false) {
                    return Err(format!(
                        "call to `{}`, which is not a trapping .noreturn stub",
                        o(0)
                    ));
                }
                Op::Trap(format!("call.uni {} (a Rust panic path)", o(0)))
            }
            ("trap", []) => Op::Trap("trap".into()),
            ("exit" | "ret", []) => {
                want(0)?;
                Op::Exit
            }
            ("ld", ["param", ty @ ("b32" | "b64")]) => {
                want(2)?;
                let (c, _) = cls(ty)?;
                let inner = o(1)
                    .strip_prefix('[')
                    .and_then(|x| x.strip_suffix(']'))
                    .ok_or("bad param address")?;
                let (name, off) = match inner.split_once('+') {
                    Some((n, off)) => (n.trim(), self.imm(off.trim())? as u32),
                    None => (inner.trim(), 0),
                };
                if name != self.param_name {
                    return Err(format!("unknown param `{name}`"));
                }
                Op::LdParam {
                    d: self.reg(o(0), &[c])?,
                    off,
                    size: if c == B64 { 8 } else { 4 },
                }
            }
            ("ld", ["v2", "b32"]) => {
                want(2)?;
                let v = self.vec(o(0), 2, &[B32])?;
                let (base, off) = self.addr(o(1), &[B64])?;
                Op::Ld {
                    d: v[0],
                    d2: Some(v[1]),
                    base,
                    off,
                    size: 4,
                }
            }
            ("ld", [ty @ ("b16" | "b32" | "b64")]) => {
                want(2)?;
                let size = match *ty {
                    "b16" => 2,
                    "b32" => 4,
                    _ => 8,
                };
                let dc: &[Class] = match size {
                    2 => &[B16, B32],
                    4 => &[B32, B64],
                    _ => &[B64],
                };
                let (base, off) = self.addr(o(1), &[B64])?;
                Op::Ld {
                    d: self.reg(o(0), dc)?,
                    d2: None,
                    base,
                    off,
                    size,
                }
            }
            ("st", [ty @ ("b16" | "b32")]) => {
                want(2)?;
                let (size, vc): (u32, &[Class]) = if *ty == "b16" {
                    (2, &[B16, B32])
                } else {
                    (4, &[B32])
                };
                let (base, off) = self.addr(o(0), &[B64])?;
                Op::St {
                    base,
                    off,
                    size,
                    v: self.reg(o(1), vc)?,
                }
            }
            ("ld", ["shared", ty @ ("f32" | "u32")]) => {
                want(2)?;
                let (addr, off) = self.addr(o(1), &[B32])?;
                if off != 0 {
                    return Err("unsupported offset".into());
                }
                let _ = ty;
                Op::LdShared {
                    d: self.reg(o(0), &[B32])?,
                    addr,
                    size: 4,
                }
            }
            ("st", ["shared", ty @ ("f32" | "u32" | "u16")]) => {
                want(2)?;
                let (addr, off) = self.addr(o(0), &[B32])?;
                if off != 0 {
                    return Err("unsupported offset".into());
                }
                let (size, c) = if *ty == "u16" { (2, B16) } else { (4, B32) };
                Op::StShared {
                    addr,
                    size,
                    v: self.reg(o(1), &[c])?,
                }
            }
            ("shfl", ["sync", mode, "b32"]) => {
                want(5)?;
                let mode = match *mode {
                    "bfly" => ShflMode::Bfly,
                    "idx" => ShflMode::Idx,
                    "up" => ShflMode::Up,
                    "down" => ShflMode::Down,
                    _ => return Err("unsupported shfl mode".into()),
                };
                Op::Shfl {
                    mode,
                    d: self.reg(o(0), &[B32])?,
                    a: self.src(o(1), &[B32])?,
                    b: self.src(o(2), &[B32])?,
                    c: self.src(o(3), &[B32])?,
                    mask: self.src(o(4), &[B32])?,
                }
            }
            ("vote", ["sync", "ballot", "b32"]) => {
                want(3)?;
                Op::Ballot {
                    d: self.reg(o(0), &[B32])?,
                    p: self.reg(o(1), &[Pred])?,
                    mask: self.src(o(2), &[B32])?,
                }
            }
            (
                "mma",
                ["sync", "aligned", "m16n8k16", "row", "col", "f32", "bf16", "bf16", "f32"],
            ) => {
                want(4)?;
                let v4 = |i| -> Result<[Reg; 4], String> {
                    Ok(self.vec(o(i), 4, &[B32])?.try_into().unwrap())
                };
                Op::Mma {
                    d: v4(0)?,
                    a: v4(1)?,
                    b: self.vec(o(2), 2, &[B32])?.try_into().unwrap(),
                    c: v4(3)?,
                }
            }
            ("ldmatrix", ["sync", "aligned", "m8n8", x, rest @ ..]) => {
                want(2)?;
                let n = match *x {
                    "x1" => 1,
                    "x2" => 2,
                    "x4" => 4,
                    _ => return Err("unsupported ldmatrix count".into()),
                };
                let trans = match rest {
                    ["shared", "b16"] => false,
                    ["trans", "shared", "b16"] => true,
                    _ => return Err("unsupported ldmatrix form".into()),
                };
                let v = self.vec(o(0), n as usize, &[B32])?;
                let mut d = [v[0]; 4];
                d[..v.len()].copy_from_slice(&v);
                let (addr, off) = self.addr(o(1), &[B32])?;
                if off != 0 {
                    return Err("unsupported offset".into());
                }
                Op::Ldmatrix { n, trans, d, addr }
            }
            ("cp", ["async", "cg", "shared", "global"]) => {
                want(4)?;
                let (dst, o0) = self.addr(o(0), &[B32])?;
                let (src, o1) = self.addr(o(1), &[B64])?;
                if o0 != 0 || o1 != 0 || self.imm(o(2))? != 16 {
                    return Err("unsupported cp.async form (needs cp-size 16, no offsets)".into());
                }
                Op::CpAsync {
                    dst,
                    src,
                    src_size: self.src(o(3), &[B32])?,
                }
            }
            ("cp", ["async", "commit_group"]) => {
                want(0)?;
                Op::Commit
            }
            ("cp", ["async", "wait_group"]) => {
                want(1)?;
                Op::Wait(self.imm(o(0))? as u32)
            }
            ("bar", ["sync"]) => {
                want(1)?;
                if self.imm(o(0))? != 0 {
                    return Err("only barrier 0 is supported".into());
                }
                Op::Bar
            }
            _ => return Err("unsupported instruction".into()),
        };
        Ok(op)
    }
}

fn decode_entry(
    t: &str,
    name: &str,
    header: &str,
    start: usize,
    end: usize,
    traps: &HashMap<String, bool>,
) -> Result<Entry, String> {
    // Header: `.visible .entry NAME( .param .align A .b8 NAME_param_0[N] )`
    let params = header
        .split_once('(')
        .and_then(|(_, p)| p.rsplit_once(')'))
        .map(|(p, _)| p.trim())
        .ok_or_else(|| format!("entry {name}: no parameter list"))?;
    let w: Vec<&str> = params.split_whitespace().collect();
    let (param_align, param_name, param_size) = match w.as_slice() {
        [".param", ".align", a, ".b8", decl] => {
            let (pn, n) = decl.split_once('[').ok_or("bad param")?;
            let a: u32 = a
                .parse()
                .map_err(|_| format!("entry {name}: bad param alignment"))?;
            let n: u32 = n
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("entry {name}: bad param size"))?;
            (a, pn.to_string(), n)
        }
        _ => {
            return Err(format!(
                "entry {name}: unsupported parameter list `{params}`"
            ))
        }
    };
    // First pass: statements, labels, register declarations, branch tables.
    let body = &t[start..end];
    let mut dec = Dec {
        regs: Regs {
            arrays: HashMap::new(),
            named: HashMap::new(),
            next: 0,
        },
        labels: HashMap::new(),
        brx_tables: HashMap::new(),
        traps,
        param_name,
    };
    let mut stmts: Vec<(u32, String)> = Vec::new();
    let mut off = 0;
    for chunk in body.split(';') {
        let chunk_pos = start + off;
        off += chunk.len() + 1;
        let mut s = chunk.trim_start();
        let mut pos = chunk_pos + (chunk.len() - s.len());
        loop {
            let before = s.len();
            s = s.trim_start();
            if let Some(r) = s.strip_prefix('{').or_else(|| s.strip_prefix('}')) {
                s = r;
            } else if let Some(colon) = s.find(':') {
                let lbl = &s[..colon];
                if !lbl.is_empty()
                    && lbl
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                {
                    let rest = s[colon + 1..].trim_start();
                    if let Some(tbl) = rest.strip_prefix(".branchtargets") {
                        let ls = tbl.split(',').map(|l| l.trim().to_string()).collect();
                        dec.brx_tables.insert(lbl.to_string(), ls);
                        s = "";
                    } else {
                        dec.labels.insert(lbl.to_string(), stmts.len() as u32);
                        s = &s[colon + 1..];
                    }
                }
            }
            pos += before - s.len();
            if s.len() == before {
                break;
            }
        }
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        let line = line_of(t, pos);
        if s.starts_with(".reg") {
            dec.regs
                .declare(s)
                .map_err(|e| format!("entry {name} line {line}: {e}"))?;
        } else if s.starts_with(".pragma") {
            if s != ".pragma \"nounroll\"" {
                return Err(format!("entry {name} line {line}: unsupported `{s}`"));
            }
        } else {
            stmts.push((line, s.split_whitespace().collect::<Vec<_>>().join(" ")));
        }
    }
    // Second pass: decode.
    let mut code = Vec::with_capacity(stmts.len());
    for (line, s) in &stmts {
        let (guard, rest) = match s.strip_prefix('@') {
            Some(r) => {
                let (g, rest) = r.split_once(' ').unwrap_or((r, ""));
                let (neg, g) = match g.strip_prefix('!') {
                    Some(g) => (true, g),
                    None => (false, g),
                };
                let p = dec
                    .reg(g, &[Class::Pred])
                    .map_err(|e| format!("entry {name} line {line}: `{s}`: {e}"))?;
                (Some((p, neg)), rest)
            }
            None => (None, s.as_str()),
        };
        let (opcode, operands) = rest.split_once(' ').unwrap_or((rest, ""));
        let ops = split_operands(operands);
        let op = dec
            .decode(opcode, guard, &ops)
            .map_err(|e| format!("entry {name} line {line}: `{opcode}` (in `{s}`): {e}"))?;
        code.push(Instr {
            op,
            line: *line,
            text: s.clone(),
        });
    }
    if !matches!(
        code.last().map(|i| &i.op),
        Some(Op::Exit | Op::Bra { guard: None, .. } | Op::Trap(_))
    ) {
        return Err(format!("entry {name}: the code can run past its end"));
    }
    for (l, &i) in &dec.labels {
        if i as usize >= code.len() {
            return Err(format!("entry {name}: label {l} points past the end"));
        }
    }
    Ok(Entry {
        name: name.to_string(),
        param_size,
        param_align,
        n_regs: dec.regs.next as usize,
        code,
    })
}
