//! The instruction decoder: each statement of an entry to one typed [`Op`], or an error
//! naming the instruction; nothing outside the implemented subset is skipped.

use std::collections::HashMap;

use super::decode::{line_of, parse_int, split_operands, Regs};
use super::*;

pub(super) struct Dec<'a> {
    pub(super) regs: Regs,
    pub(super) labels: HashMap<String, u32>,
    pub(super) brx_tables: HashMap<String, Vec<String>>,
    pub(super) traps: &'a HashMap<String, bool>,
    pub(super) param_name: String,
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
                    "equ" => Cmp::Equ,
                    "neu" => Cmp::Neu,
                    "ltu" => Cmp::Ltu,
                    "leu" => Cmp::Leu,
                    "gtu" => Cmp::Gtu,
                    "geu" => Cmp::Geu,
                    "num" => Cmp::Num,
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
                if !float
                    && !matches!(
                        cmp,
                        Cmp::Eq | Cmp::Ne | Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge
                    )
                {
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

pub(super) fn decode_entry(
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
