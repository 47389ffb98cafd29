//! Layout and copies.

use super::*;

#[test]
pub(super) fn patchify_and_unpatchify_match_cpu_layouts() {
    let mut rng = Rng::new("patchify");
    for bf16 in DTYPES {
        let (f, c, hh, ww, ph, pw) = (2u32, 3u32, 4u32, 6u32, 2u32, 3u32);
        let (x, xd) = data(&mut rng, (f * c * hh * ww) as usize, -1.0, 1.0, bf16);
        let (gh, gw) = (hh / ph, ww / pw);
        let feat = (c * ph * pw) as usize;
        let mut y = Output::new(x.len(), bf16);
        let p = PatchifyParams {
            x: xd.ptr(),
            y: y.ptr(),
            f,
            c,
            hh,
            ww,
            ph,
            pw,
        };
        p.check().unwrap();
        run(p, bf16);
        // cpu.rs patchify, loop for loop.
        let mut want = vec![0f64; x.len()];
        let (c_, hh_, ww_, ph_, pw_) = (
            c as usize,
            hh as usize,
            ww as usize,
            ph as usize,
            pw as usize,
        );
        for fi in 0..f as usize {
            for i in 0..gh as usize {
                for j in 0..gw as usize {
                    let tok = (fi * gh as usize + i) * gw as usize + j;
                    for ci in 0..c_ {
                        for a in 0..ph_ {
                            for b in 0..pw_ {
                                want[tok * feat + (ci * ph_ + a) * pw_ + b] = x
                                    [((fi * c_ + ci) * hh_ + i * ph_ + a) * ww_ + j * pw_ + b]
                                    as f64;
                            }
                        }
                    }
                }
            }
        }
        check(
            &format!("patchify {}", name(bf16)),
            bf16,
            &y.values(),
            &want,
            (0.0, 0.0),
            0.0,
        );
        assert!(PatchifyParams { hh: 5, ..p }.check().is_err());

        // unpatchify: channel-fastest features → latent.
        let (z, zd) = data(&mut rng, x.len(), -1.0, 1.0, bf16);
        let mut out = Output::new(x.len(), bf16);
        let p = UnpatchifyParams {
            x: zd.ptr(),
            y: out.ptr(),
            f,
            gh,
            gw,
            ph,
            pw,
            c,
        };
        p.check().unwrap();
        run(p, bf16);
        let mut want = vec![0f64; x.len()];
        for fi in 0..f as usize {
            for i in 0..gh as usize {
                for j in 0..gw as usize {
                    let tok = (fi * gh as usize + i) * gw as usize + j;
                    for a in 0..ph_ {
                        for b in 0..pw_ {
                            for ci in 0..c_ {
                                want[((fi * c_ + ci) * hh_ + i * ph_ + a) * ww_ + j * pw_ + b] =
                                    z[tok * feat + (a * pw_ + b) * c_ + ci] as f64;
                            }
                        }
                    }
                }
            }
        }
        check(
            &format!("unpatchify {}", name(bf16)),
            bf16,
            &out.values(),
            &want,
            (0.0, 0.0),
            0.0,
        );
    }
}

#[test]
pub(super) fn copy_rows_is_backend_copy_rows() {
    let mut rng = Rng::new("copy_rows");
    for bf16 in DTYPES {
        let (rows, cols, src_stride, src_off) = (7u32, 13u32, 40u32, 5usize);
        let (src, sd) = data(
            &mut rng,
            src_off + (rows * src_stride) as usize,
            -1.0,
            1.0,
            bf16,
        );
        // The destination already holds data; only the copied window may change.
        let (dst0, dd) = data(&mut rng, 200, -1.0, 1.0, bf16);
        let mut dst = Output::with(&dd);
        let dst_off = 9usize;
        let esz = if bf16 { 2 } else { 4 };
        let p = CopyRowsParams {
            dst: dst.ptr() + (dst_off * esz) as u64,
            src: sd.ptr() + (src_off * esz) as u64,
            dst_stride: cols,
            src_stride,
            rows,
            cols,
        };
        p.check().unwrap();
        run(p, bf16);
        let mut want: Vec<f64> = dst0.iter().map(|&v| v as f64).collect();
        for r in 0..rows as usize {
            for c in 0..cols as usize {
                want[dst_off + r * cols as usize + c] =
                    src[src_off + r * src_stride as usize + c] as f64;
            }
        }
        check(
            &format!("copy_rows {}", name(bf16)),
            bf16,
            &dst.values(),
            &want,
            (0.0, 0.0),
            0.0,
        );
    }
}

/// Where element (row r, head h, col c) lives in a buffer with (row, head) strides.
pub(super) fn at(r: usize, h: usize, c: usize, row_stride: usize, head_stride: usize) -> usize {
    h * head_stride + r * row_stride + c
}

#[test]
pub(super) fn kv_write_gathers_a_groups_heads_into_a_slot() {
    let mut rng = Rng::new("kv_write");
    for bf16 in DTYPES {
        // Chunk K/V [frames·tpf, heads·d]; write frame 1's rows of heads [4, 1, 2] into a slot,
        // once token-major [tpf, 3·d] and once head-major [3, tpf, d]; d odd once (bf16 then
        // copies element by element).
        for &(d, token_major, with_v) in &[(8usize, true, true), (8, false, true), (5, true, false)]
        {
            let (heads, tpf, frames) = (5usize, 6usize, 3usize);
            let group: Vec<u32> = vec![4, 1, 2];
            let gh = group.len();
            let (k, kd) = data(&mut rng, frames * tpf * heads * d, -2.0, 2.0, bf16);
            let (v, vd) = data(&mut rng, frames * tpf * heads * d, -2.0, 2.0, bf16);
            let (mut ks, mut vs) = (
                Output::new(tpf * gh * d, bf16),
                Output::new(tpf * gh * d, bf16),
            );
            let esz = if bf16 { 2 } else { 4 };
            let frame_off = (tpf * heads * d * esz) as u64;
            let (drs, dhs) = if token_major {
                (gh * d, d)
            } else {
                (d, tpf * d)
            };
            let p = KvWriteParams {
                job: HeadCopyJob {
                    src_k: kd.ptr() + frame_off,
                    src_v: if with_v { vd.ptr() + frame_off } else { 0 },
                    dst_k: ks.ptr(),
                    dst_v: if with_v { vs.ptr() } else { 0 },
                    heads: group.as_ptr() as u64,
                    n_heads: gh as u32,
                    _pad: 0,
                },
                shape: HeadCopyShape {
                    rows: tpf as u32,
                    head_dim: d as u32,
                    src_row_stride: (heads * d) as u32,
                    src_head_stride: d as u32,
                    dst_row_stride: drs as u32,
                    dst_head_stride: dhs as u32,
                },
            };
            p.check().unwrap();
            run(p, bf16);
            for (what, src, out) in [("k", &k, &ks), ("v", &v, &vs)] {
                let got = out.values();
                if what == "v" && !with_v {
                    assert!(
                        got.iter().all(|x| x.is_nan()),
                        "v written although dst_v = 0"
                    );
                    continue;
                }
                let mut want = vec![f64::NAN; tpf * gh * d];
                for (gi, &h) in group.iter().enumerate() {
                    for r in 0..tpf {
                        for c in 0..d {
                            want[at(r, gi, c, drs, dhs)] =
                                src[(tpf + r) * heads * d + h as usize * d + c] as f64;
                        }
                    }
                }
                check(
                    &format!(
                        "kv_write {} {what} d{d} token_major {token_major}",
                        name(bf16)
                    ),
                    bf16,
                    &got,
                    &want,
                    (0.0, 0.0),
                    0.0,
                );
            }
        }
    }
}

#[test]
pub(super) fn kv_compact_moves_retained_frames_into_group_slots() {
    let mut rng = Rng::new("kv_compact");
    for bf16 in DTYPES {
        // Phase-1 layout: one group of all heads, 4 frame slots [heads, tpf, d] (head-major, as
        // host/src/cache). After DHP: sink group [0, 3] keeps frame slot 0; neighbor group [2]
        // keeps slots 1..4; dummy group [1, 4] keeps the last slot; plus an empty group (no jobs).
        let (heads, tpf, d, slots) = (5usize, 4usize, 6usize, 4usize);
        let slot_len = heads * tpf * d;
        let old_k: Vec<(Vec<f32>, Input)> = (0..slots)
            .map(|_| data(&mut rng, slot_len, -2.0, 2.0, bf16))
            .collect();
        let old_v: Vec<(Vec<f32>, Input)> = (0..slots)
            .map(|_| data(&mut rng, slot_len, -2.0, 2.0, bf16))
            .collect();
        let groups: Vec<(Vec<u32>, Vec<usize>)> = vec![
            (vec![0, 3], vec![0]),
            (vec![2], vec![1, 2, 3]),
            (vec![1, 4], vec![3]),
            (vec![], vec![]),
        ];
        let mut outs = Vec::new(); // (group, frame slot, K out, V out)
        let mut jobs = Vec::new();
        for (gi, (hs, frames)) in groups.iter().enumerate() {
            for &s in frames {
                let mut ko = Output::new(hs.len() * tpf * d, bf16);
                let mut vo = Output::new(hs.len() * tpf * d, bf16);
                jobs.push(HeadCopyJob {
                    src_k: old_k[s].1.ptr(),
                    src_v: old_v[s].1.ptr(),
                    dst_k: ko.ptr(),
                    dst_v: vo.ptr(),
                    heads: hs.as_ptr() as u64,
                    n_heads: hs.len() as u32,
                    _pad: 0,
                });
                outs.push((gi, s, ko, vo));
            }
        }
        let p = KvCompactParams {
            jobs: jobs.as_ptr() as u64,
            n_jobs: jobs.len() as u32,
            max_heads: 3,
            shape: HeadCopyShape {
                rows: tpf as u32,
                head_dim: d as u32,
                src_row_stride: d as u32,
                src_head_stride: (tpf * d) as u32,
                dst_row_stride: d as u32,
                dst_head_stride: (tpf * d) as u32,
            },
        };
        p.check().unwrap();
        run(p, bf16);
        for (gi, s, ko, vo) in &outs {
            let hs = &groups[*gi].0;
            for (what, src, out) in [("k", &old_k[*s].0, ko), ("v", &old_v[*s].0, vo)] {
                let mut want = vec![0f64; hs.len() * tpf * d];
                for (pi, &h) in hs.iter().enumerate() {
                    for r in 0..tpf {
                        for c in 0..d {
                            want[(pi * tpf + r) * d + c] =
                                src[(h as usize * tpf + r) * d + c] as f64;
                        }
                    }
                }
                check(
                    &format!("kv_compact {} group {gi} slot {s} {what}", name(bf16)),
                    bf16,
                    &out.values(),
                    &want,
                    (0.0, 0.0),
                    0.0,
                );
            }
        }
    }
}
