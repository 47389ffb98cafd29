//! Warp collectives (shfl, vote, mma.sync, ldmatrix) executed when every lane of a warp
//! waits at the same instruction, and the cp.async request queue.

use super::*;

impl Run<'_> {
    pub(super) fn collective(&mut self, w: usize, pc: u32) -> R<()> {
        let n = self.n_threads();
        let lanes = w * 32..(w * 32 + 32).min(n);
        let present = lanes.len();
        let nr = self.e.n_regs.max(1);
        let t0 = lanes.start;
        let op = self.e.code[pc as usize].op.clone();
        let full = |s: &Self, what: &str| -> R<()> {
            if present != 32 {
                return Err(s.err(
                    SimErrorKind::Collective,
                    Some(t0),
                    format!("{what} needs a full warp of 32 threads at {}", s.at(pc)),
                ));
            }
            Ok(())
        };
        let reg = |s: &Self, t: usize, r: Reg| s.regs[t * nr + r as usize];
        match op {
            Op::Shfl {
                mode,
                d,
                a,
                b,
                c,
                mask,
            } => {
                let vals: Vec<u64> = lanes.clone().map(|t| self.rd(t * nr, a)).collect();
                let mut out = Vec::with_capacity(present);
                for (l, t) in lanes.clone().enumerate() {
                    let m = self.rd(t * nr, mask) as u32;
                    if m != u32::MAX {
                        return Err(self.err(
                            SimErrorKind::Collective,
                            Some(t),
                            format!(
                                "shfl member mask {m:#x} (only a full mask is supported) at {}",
                                self.at(pc)
                            ),
                        ));
                    }
                    // PTX ISA: bval = b[4:0], cval = c[4:0], segmask = c[12:8].
                    let bval = (self.rd(t * nr, b) & 0x1f) as i64;
                    let cw = self.rd(t * nr, c) as u32;
                    let (cval, seg) = ((cw & 0x1f) as i64, ((cw >> 8) & 0x1f) as i64);
                    let lane = l as i64;
                    let max_lane = (lane & seg) | (cval & !seg);
                    let min_lane = lane & seg;
                    let (j, ok) = match mode {
                        ShflMode::Up => (lane - bval, lane - bval >= max_lane),
                        ShflMode::Down => (lane + bval, lane + bval <= max_lane),
                        ShflMode::Bfly => (lane ^ bval, (lane ^ bval) <= max_lane),
                        ShflMode::Idx => {
                            let j = min_lane | (bval & !seg);
                            (j, j <= max_lane)
                        }
                    };
                    let j = if ok { j } else { lane };
                    if j as usize >= present {
                        return Err(self.err(SimErrorKind::Collective, Some(t), format!("shfl reads lane {j}, which does not exist in this partial warp, at {}", self.at(pc))));
                    }
                    out.push(vals[j as usize]);
                }
                for (l, t) in lanes.enumerate() {
                    self.regs[t * nr + d as usize] = out[l];
                }
            }
            Op::Ballot { d, p, mask } => {
                let mut bits = 0u64;
                for (l, t) in lanes.clone().enumerate() {
                    if self.rd(t * nr, mask) as u32 != u32::MAX {
                        return Err(self.err(
                            SimErrorKind::Collective,
                            Some(t),
                            format!("vote member mask is not full at {}", self.at(pc)),
                        ));
                    }
                    if reg(self, t, p) != 0 {
                        bits |= 1 << l;
                    }
                }
                for t in lanes {
                    self.regs[t * nr + d as usize] = bits;
                }
            }
            Op::Mma { d, a, b, c } => {
                full(self, "mma.sync")?;
                let lo = |v: u64| f32::from_bits((v as u32) << 16);
                let hi = |v: u64| f32::from_bits(v as u32 & 0xffff_0000);
                let mut am = [[0f32; 16]; 16];
                let mut bm = [[0f32; 8]; 16];
                for (l, t) in lanes.clone().enumerate() {
                    let (g, q) = (l / 4, l % 4);
                    // A fragment (PTX ISA, m16n8k16 .bf16): a0,a1: (g, 2q..), a2,a3: (g+8, 2q..),
                    // a4,a5: (g, 2q+8..), a6,a7: (g+8, 2q+8..); two bf16 per register.
                    for (i, (r, k)) in [
                        (g, 2 * q),
                        (g + 8, 2 * q),
                        (g, 2 * q + 8),
                        (g + 8, 2 * q + 8),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let v = reg(self, t, a[i]);
                        am[r][k] = lo(v);
                        am[r][k + 1] = hi(v);
                    }
                    // B fragment: b0,b1: (k = 2q.., n = g), b2,b3: (k = 2q+8.., n = g).
                    for (i, k) in [2 * q, 2 * q + 8].into_iter().enumerate() {
                        let v = reg(self, t, b[i]);
                        bm[k][g] = lo(v);
                        bm[k + 1][g] = hi(v);
                    }
                }
                let mut res = Vec::with_capacity(32);
                for (l, t) in lanes.clone().enumerate() {
                    let (g, q) = (l / 4, l % 4);
                    let mut out = [0u64; 4];
                    // C/D fragment: c0,c1: (g, 2q..), c2,c3: (g+8, 2q..).
                    for (i, (r, col)) in [
                        (g, 2 * q),
                        (g, 2 * q + 1),
                        (g + 8, 2 * q),
                        (g + 8, 2 * q + 1),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let acc = (0..16).fold(0f32, |s, k| s + am[r][k] * bm[k][col]);
                        out[i] = (f32b(reg(self, t, c[i])) + acc).to_bits() as u64;
                    }
                    res.push(out);
                }
                for (l, t) in lanes.enumerate() {
                    for i in 0..4 {
                        self.regs[t * nr + d[i] as usize] = res[l][i];
                    }
                }
            }
            Op::Ldmatrix {
                n: m,
                trans,
                d,
                addr,
            } => {
                full(self, "ldmatrix")?;
                let m = m as usize;
                // Lanes 8i..8i+7 give the row addresses of matrix i; check and read them.
                let mut rows = vec![[0u8; 16]; 8 * m];
                for (r, row) in rows.iter_mut().enumerate() {
                    let t = t0 + r;
                    let a = reg(self, t, addr) as u32;
                    let off = self.shared(t, pc as usize, a, 16, false, "ldmatrix row")?;
                    row.copy_from_slice(&self.smem[off..off + 16]);
                }
                let h = |row: &[u8; 16], c: usize| {
                    u16::from_le_bytes([row[2 * c], row[2 * c + 1]]) as u64
                };
                for (l, t) in lanes.enumerate() {
                    for i in 0..m {
                        let rr = |r: usize| &rows[8 * i + r];
                        let v = if trans {
                            let (r, col) = (2 * (l % 4), l / 4);
                            h(rr(r), col) | h(rr(r + 1), col) << 16
                        } else {
                            let (r, col) = (l / 4, 2 * (l % 4));
                            h(rr(r), col) | h(rr(r), col + 1) << 16
                        };
                        self.regs[t * nr + d[i] as usize] = v;
                    }
                }
            }
            _ => unreachable!("not a collective"),
        }
        Ok(())
    }

    /// Turns the per-warp request lists of this block into sector and bank-conflict counts.
    pub(super) fn flush_requests(&mut self) {
        let Some(c) = self.counters.as_deref_mut() else {
            return;
        };
        let mut keys: Vec<_> = self.requests.keys().copied().collect();
        keys.sort();
        for k in keys {
            let accs = &self.requests[&k];
            let class = self.e.code[k.1 as usize].op.class();
            if accs[0].0 >> 63 == 1 {
                // Shared: 32 banks of 4 bytes. A request needs as many wavefronts as the
                // most distinct 4-byte words any one bank is asked for. ldmatrix reads 8 rows
                // of 16 bytes per matrix: each 8-row phase is its own request.
                let phases: Vec<&[(u64, u32)]> = if class == IClass::Ldmatrix {
                    accs.chunks(8).collect()
                } else {
                    vec![&accs[..]]
                };
                for ph in phases {
                    let mut words: HashSet<u64> = HashSet::new();
                    for &(a, len) in ph {
                        let a = a & !(1 << 63);
                        for w in (a / 4)..(a + len as u64).div_ceil(4) {
                            words.insert(w);
                        }
                    }
                    let mut per_bank = [0u32; 32];
                    for w in &words {
                        per_bank[(w % 32) as usize] += 1;
                    }
                    let wavefronts = per_bank.iter().copied().max().unwrap_or(1).max(1);
                    let s = c.shared.entry(class).or_default();
                    s.0 += 1;
                    s.1 += wavefronts as u64;
                }
            } else {
                let mut sectors: HashSet<u64> = HashSet::new();
                for &(a, len) in accs {
                    for s in (a / 32)..(a + len as u64).div_ceil(32) {
                        sectors.insert(s);
                    }
                }
                let s = c.global.entry(class).or_default();
                s.0 += 1;
                s.1 += sectors.len() as u64;
            }
        }
        self.requests.clear();
    }
}
