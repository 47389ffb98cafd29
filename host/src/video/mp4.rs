//! H.264 (openh264) in a minimal MP4: one video track, samples appended to `mdat` as they are
//! encoded, the index (`moov`) written at the end.
//!
//! Why our own muxer: a single-track, constant-rate, no-B-frame MP4 is a dozen fixed boxes, and
//! writing them here keeps the file streaming (frames go to disk as they come; only the sample
//! sizes stay in memory) without a muxer dependency. The encoder is the `openh264` crate, which
//! builds Cisco's OpenH264 from its bundled C++ source (no system library, no download).

use std::io::{Seek, SeekFrom, Write};

use openh264::encoder::{Encoder, EncoderConfig, FrameRate, IntraFramePeriod, QpRange, RateControlMode, VuiConfig};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;

use super::yuv420_from_rgb8;
use crate::{Error, Result};

fn io(e: std::io::Error) -> Error {
    Error::io("<mp4>", e)
}

/// A box: 32-bit size, 4-char type, payload.
fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + payload.len());
    v.extend_from_slice(&((8 + payload.len()) as u32).to_be_bytes());
    v.extend_from_slice(kind);
    v.extend_from_slice(payload);
    v
}

/// A full box: version 0 and `flags`, then the payload.
fn full(kind: &[u8; 4], flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = flags.to_be_bytes().to_vec();
    p[0] = 0;
    p.extend_from_slice(payload);
    bx(kind, &p)
}

struct Be(Vec<u8>);

impl Be {
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// Streams an H.264 MP4 to `W`.
pub struct Mp4Writer<W: Write + Seek> {
    w: W,
    enc: Encoder,
    width: usize,
    height: usize,
    fps: u32,
    mdat_start: u64,
    sizes: Vec<u32>,
    sync: Vec<u32>,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

impl<W: Write + Seek> Mp4Writer<W> {
    pub fn new(mut w: W, width: usize, height: usize, fps: u32) -> Result<Self> {
        // High quality (buffer-based rate control within QP 8..=20; no frame skipping, so every
        // pushed frame becomes a sample; the quality/bitrate modes warn on stderr without
        // skipping), an IDR
        // every 2 s for seeking, BT.601 limited-range colour tagged in the SPS (what our RGB→YUV
        // conversion uses), one thread for a deterministic bitstream.
        let cfg = EncoderConfig::new()
            .skip_frames(false)
            .rate_control_mode(RateControlMode::Bufferbased)
            .bitrate(openh264::encoder::BitRate::from_bps(
                (width * height * fps as usize).clamp(200_000, u32::MAX as usize) as u32,
            ))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .qp(QpRange::new(8, 20))
            .intra_frame_period(IntraFramePeriod::from_num_frames(2 * fps))
            .vui(VuiConfig::bt601())
            .num_threads(1);
        let enc = Encoder::with_api_config(OpenH264API::from_source(), cfg)
            .map_err(|e| Error::Encode(format!("openh264 encoder: {e}")))?;
        let mut ftyp = Be(Vec::new());
        ftyp.bytes(b"isom").u32(0x200).bytes(b"isomiso2avc1mp41");
        w.write_all(&bx(b"ftyp", &ftyp.0)).map_err(io)?;
        let mdat_start = w.stream_position().map_err(io)?;
        // A 64-bit mdat header (size 1, then the real size once known).
        w.write_all(&[0, 0, 0, 1]).map_err(io)?;
        w.write_all(b"mdat").map_err(io)?;
        w.write_all(&[0u8; 8]).map_err(io)?;
        Ok(Mp4Writer {
            w,
            enc,
            width,
            height,
            fps,
            mdat_start,
            sizes: Vec::new(),
            sync: Vec::new(),
            sps: None,
            pps: None,
        })
    }

    /// Encodes one RGB8 frame `[h, w, 3]` and appends it as a sample.
    pub fn push(&mut self, rgb: &[u8]) -> Result<()> {
        let (w, h) = (self.width, self.height);
        let (y, u, v) = yuv420_from_rgb8(rgb, w, h);
        let src = YUVSlices::new((&y, &u, &v), (w, h), (w, w / 2, w / 2));
        let bs = self.enc.encode(&src).map_err(|e| Error::Encode(format!("openh264 encode: {e}")))?;
        // Annex B NAL units → length-prefixed (AVCC) sample; SPS/PPS go to the avcC box.
        let mut sample = Vec::new();
        let mut idr = false;
        for l in 0..bs.num_layers() {
            let layer = bs.layer(l).expect("layer index in range");
            for n in 0..layer.nal_count() {
                let nal = layer.nal_unit(n).expect("nal index in range");
                let body = strip_start_code(nal);
                let Some(&head) = body.first() else { continue };
                match head & 0x1f {
                    7 => {
                        self.sps.get_or_insert_with(|| body.to_vec());
                    }
                    8 => {
                        self.pps.get_or_insert_with(|| body.to_vec());
                    }
                    t => {
                        idr |= t == 5;
                        sample.extend_from_slice(&(body.len() as u32).to_be_bytes());
                        sample.extend_from_slice(body);
                    }
                }
            }
        }
        if sample.is_empty() {
            return Err(Error::Encode(format!("openh264 gave no picture for frame {}", self.sizes.len())));
        }
        self.w.write_all(&sample).map_err(io)?;
        self.sizes.push(sample.len() as u32);
        if idr {
            self.sync.push(self.sizes.len() as u32);
        }
        Ok(())
    }

    /// Patches the `mdat` size and writes the `moov` index; returns the sink.
    pub fn finish(&mut self) -> Result<&mut W> {
        let (Some(sps), Some(pps)) = (self.sps.clone(), self.pps.clone()) else {
            return Err(Error::Encode("openh264 gave no SPS/PPS".into()));
        };
        if sps.len() < 4 {
            return Err(Error::Encode("openh264 gave a truncated SPS".into()));
        }
        let end = self.w.stream_position().map_err(io)?;
        self.w.seek(SeekFrom::Start(self.mdat_start + 8)).map_err(io)?;
        self.w.write_all(&(end - self.mdat_start).to_be_bytes()).map_err(io)?;
        self.w.seek(SeekFrom::Start(end)).map_err(io)?;
        let moov = self.moov(&sps, &pps);
        self.w.write_all(&moov).map_err(io)?;
        Ok(&mut self.w)
    }

    fn moov(&self, sps: &[u8], pps: &[u8]) -> Vec<u8> {
        let n = self.sizes.len() as u32;
        let (w, h) = (self.width as u32, self.height as u32);
        // Track timescale: 1000 ticks per frame; the movie counts milliseconds.
        let timescale = self.fps * 1000;
        let media_dur = n * 1000;
        let movie_dur = (n as u64 * 1000 / self.fps as u64) as u32;
        let mut m = Be(Vec::new());
        m.u32(0).u32(0).u32(1000).u32(movie_dur).u32(0x0001_0000).u16(0x0100).u16(0).u32(0).u32(0);
        MATRIX.iter().for_each(|x| {
            m.u32(*x);
        });
        m.bytes(&[0u8; 24]).u32(2);
        let mvhd = full(b"mvhd", 0, &m.0);
        let mut t = Be(Vec::new());
        t.u32(0).u32(0).u32(1).u32(0).u32(movie_dur).u32(0).u32(0).u16(0).u16(0).u16(0).u16(0);
        MATRIX.iter().for_each(|x| {
            t.u32(*x);
        });
        t.u32(w << 16).u32(h << 16);
        let tkhd = full(b"tkhd", 3, &t.0);
        let mut d = Be(Vec::new());
        d.u32(0).u32(0).u32(timescale).u32(media_dur).u16(0x55c4).u16(0); // language "und"
        let mdhd = full(b"mdhd", 0, &d.0);
        let mut hd = Be(Vec::new());
        hd.u32(0).bytes(b"vide").bytes(&[0u8; 12]).bytes(b"VideoHandler\0");
        let hdlr = full(b"hdlr", 0, &hd.0);
        let vmhd = full(b"vmhd", 1, &[0u8; 8]);
        let dref = full(b"dref", 0, &[&1u32.to_be_bytes()[..], &full(b"url ", 1, &[])].concat());
        let dinf = bx(b"dinf", &dref);
        let mut avcc = Be(Vec::new());
        avcc.bytes(&[1, sps[1], sps[2], sps[3], 0xff, 0xe1])
            .u16(sps.len() as u16)
            .bytes(sps)
            .bytes(&[1])
            .u16(pps.len() as u16)
            .bytes(pps);
        let mut e = Be(Vec::new());
        e.bytes(&[0u8; 6])
            .u16(1)
            .bytes(&[0u8; 16])
            .u16(w as u16)
            .u16(h as u16)
            .u32(0x0048_0000)
            .u32(0x0048_0000)
            .u32(0)
            .u16(1);
        let mut name = [0u8; 32];
        name[0] = 4;
        name[1..5].copy_from_slice(b"dfrt");
        e.bytes(&name).u16(0x18).u16(0xffff).bytes(&bx(b"avcC", &avcc.0));
        let stsd = full(b"stsd", 0, &[&1u32.to_be_bytes()[..], &bx(b"avc1", &e.0)].concat());
        let stts = full(b"stts", 0, &Be(Vec::new()).u32(1).u32(n).u32(1000).0.clone());
        let mut ss = Be(Vec::new());
        ss.u32(self.sync.len() as u32);
        self.sync.iter().for_each(|s| {
            ss.u32(*s);
        });
        let stss = full(b"stss", 0, &ss.0);
        let stsc = full(b"stsc", 0, &Be(Vec::new()).u32(1).u32(1).u32(n).u32(1).0.clone());
        let mut sz = Be(Vec::new());
        sz.u32(0).u32(n);
        self.sizes.iter().for_each(|s| {
            sz.u32(*s);
        });
        let stsz = full(b"stsz", 0, &sz.0);
        let first = self.mdat_start + 16;
        let co64 = full(b"co64", 0, &[&1u32.to_be_bytes()[..], &first.to_be_bytes()].concat());
        let stbl = bx(b"stbl", &[stsd, stts, stss, stsc, stsz, co64].concat());
        let minf = bx(b"minf", &[vmhd, dinf, stbl].concat());
        let mdia = bx(b"mdia", &[mdhd, hdlr, minf].concat());
        let trak = bx(b"trak", &[tkhd, mdia].concat());
        bx(b"moov", &[mvhd, trak].concat())
    }
}

fn strip_start_code(nal: &[u8]) -> &[u8] {
    if nal.starts_with(&[0, 0, 0, 1]) {
        &nal[4..]
    } else if nal.starts_with(&[0, 0, 1]) {
        &nal[3..]
    } else {
        nal
    }
}
