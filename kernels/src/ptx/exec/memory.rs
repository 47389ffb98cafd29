//! Memory accesses of the executor: generic/global ones checked against the live
//! allocations (the memcheck), shared ones bounds-, alignment- and race-checked.

use super::*;

impl Run<'_> {
    /// Memcheck of a global access (the live allocations), natural alignment.
    pub(super) fn global(
        &mut self,
        t: usize,
        pc: usize,
        addr: u64,
        len: u32,
        align: u64,
        write: bool,
    ) -> R<()> {
        let what = if write { "store" } else { "load" };
        if !addr.is_multiple_of(align) {
            return Err(self.err(
                SimErrorKind::Misaligned,
                Some(t),
                format!(
                    "global {what} of {len} bytes at {addr:#x} is misaligned at {}",
                    self.at(pc as u32)
                ),
            ));
        }
        if let Err(why) = self.mem.check(addr, len as u64) {
            return Err(self.err(
                SimErrorKind::Memcheck,
                Some(t),
                format!(
                    "out-of-bounds global {what} of {len} bytes at {addr:#x} ({why}) at {}",
                    self.at(pc as u32)
                ),
            ));
        }
        if self.counters.is_some() {
            let k = self.visits[t * self.e.code.len() + pc];
            self.requests
                .entry(((t / 32) as u32, pc as u32, k))
                .or_default()
                .push((addr, len));
        }
        Ok(())
    }

    /// Bounds, alignment and racecheck of a shared access; returns the offset.
    pub(super) fn shared(
        &mut self,
        t: usize,
        pc: usize,
        addr: u32,
        len: u32,
        write: bool,
        what: &str,
    ) -> R<usize> {
        let size = self.smem.len() as i64;
        let off = addr as i64 - SMEM_BASE as i64;
        if off < 0 || off + len as i64 > size {
            return Err(self.err(
                SimErrorKind::SharedOutOfBounds,
                Some(t),
                format!("{what} of {len} bytes at shared offset {off} (address {addr:#x}) is outside the {size}-byte dynamic shared memory at {}", self.at(pc as u32)),
            ));
        }
        if !addr.is_multiple_of(len) {
            return Err(self.err(
                SimErrorKind::Misaligned,
                Some(t),
                format!(
                    "{what} at shared address {addr:#x} is not {len}-byte aligned at {}",
                    self.at(pc as u32)
                ),
            ));
        }
        let off = off as usize;
        if self.counters.is_some() && what != "cp.async destination" {
            let k = self.visits[t * self.e.code.len() + pc];
            self.requests
                .entry(((t / 32) as u32, pc as u32, k))
                .or_default()
                .push((addr as u64 | 1 << 63, len));
        }
        if self.racecheck {
            let me = t as u32;
            let warp = me / 32;
            let ep = self.epoch;
            for i in off..off + len as usize {
                let sh = self.shadow[i];
                let other = if sh.inflight != 0 && what != "cp.async destination" {
                    Some((
                        sh.inflight - 1,
                        sh.inflight_pc,
                        "an un-waited cp.async (no cp.async.wait_group covers it yet)",
                    ))
                } else if sh.inflight != 0 && sh.inflight - 1 != me {
                    Some((
                        sh.inflight - 1,
                        sh.inflight_pc,
                        "an un-waited cp.async of another thread",
                    ))
                } else if sh.w_epoch == ep && sh.w_thr / 32 != warp {
                    Some((
                        sh.w_thr,
                        sh.w_pc,
                        "a write by another warp since the last barrier",
                    ))
                } else if write && sh.r_epoch == ep && sh.r_thr / 32 != warp {
                    Some((
                        sh.r_thr,
                        sh.r_pc,
                        "a read by another warp since the last barrier",
                    ))
                } else {
                    None
                };
                if let Some((ot, opc, why)) = other {
                    return Err(self.err(
                        SimErrorKind::Race,
                        Some(t),
                        format!(
                            "shared-memory race on byte {i} (address {:#x}): {what} by {} at {} conflicts with {why}: {} at {}",
                            SMEM_BASE as usize + i,
                            self.thread_name(me),
                            self.at(pc as u32),
                            self.thread_name(ot),
                            self.at(opc)
                        ),
                    ));
                }
                let sh = &mut self.shadow[i];
                if write {
                    sh.w_epoch = ep;
                    sh.w_thr = me;
                    sh.w_pc = pc as u32;
                } else if !(sh.r_epoch == ep && sh.r_thr / 32 != warp) {
                    // Keep a reader of another warp of this epoch if there is one: it is the
                    // one a later write by this warp must still conflict with.
                    sh.r_epoch = ep;
                    sh.r_thr = me;
                    sh.r_pc = pc as u32;
                }
            }
        }
        Ok(off)
    }
}
