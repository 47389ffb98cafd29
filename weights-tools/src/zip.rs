//! A minimal reader for the zip archives `torch.save` writes: it lists the central directory
//! (zip64 included, for checkpoints over 4 GiB) and hands out the byte ranges of stored
//! (uncompressed) entries, so tensor data can be read straight from the mapped file.

/// One archive member: its name and the absolute byte range of its data.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub start: usize,
    pub end: usize,
    pub crc32: u32,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at.checked_add(2)?).map(|s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?).map(|s| u32::from_le_bytes(s.try_into().unwrap()))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at.checked_add(8)?).map(|s| u64::from_le_bytes(s.try_into().unwrap()))
}

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_LOC_SIG: u32 = 0x0706_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const CDIR_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

/// Lists the entries of a zip archive held in `b`. Errors are plain messages; the caller adds
/// the file name.
pub fn entries(b: &[u8]) -> Result<Vec<Entry>, String> {
    let trunc = || "the zip archive is truncated or corrupt".to_string();
    if b.len() < 22 {
        return Err(format!("{} bytes is too short for a zip archive", b.len()));
    }
    // The end-of-central-directory record is in the last 22 + 65535 (comment) bytes.
    let lo = b.len().saturating_sub(22 + 0xFFFF);
    let eocd = (lo..=b.len() - 22)
        .rev()
        .find(|&i| u32_at(b, i) == Some(EOCD_SIG))
        .ok_or("no zip end-of-central-directory record: the file is truncated or not a zip archive")?;
    let mut count = u16_at(b, eocd + 10).ok_or_else(trunc)? as u64;
    let mut cd_size = u32_at(b, eocd + 12).ok_or_else(trunc)? as u64;
    let mut cd_off = u32_at(b, eocd + 16).ok_or_else(trunc)? as u64;
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_off == 0xFFFF_FFFF {
        // zip64: a locator right before the record points at the 64-bit record.
        let loc = eocd.checked_sub(20).ok_or_else(trunc)?;
        if u32_at(b, loc) != Some(EOCD64_LOC_SIG) {
            return Err("zip64 archive without a zip64 locator".into());
        }
        let rec = u64_at(b, loc + 8).ok_or_else(trunc)? as usize;
        if u32_at(b, rec) != Some(EOCD64_SIG) {
            return Err("zip64 end-of-central-directory record not found".into());
        }
        count = u64_at(b, rec + 32).ok_or_else(trunc)?;
        cd_size = u64_at(b, rec + 40).ok_or_else(trunc)?;
        cd_off = u64_at(b, rec + 48).ok_or_else(trunc)?;
    }
    let cd_end = cd_off.checked_add(cd_size).ok_or_else(trunc)?;
    if cd_end > b.len() as u64 {
        return Err(trunc());
    }
    let mut out = Vec::new();
    let mut p = cd_off as usize;
    for _ in 0..count {
        if u32_at(b, p) != Some(CDIR_SIG) {
            return Err(trunc());
        }
        let flags = u16_at(b, p + 8).ok_or_else(trunc)?;
        let method = u16_at(b, p + 10).ok_or_else(trunc)?;
        let crc32 = u32_at(b, p + 16).ok_or_else(trunc)?;
        let mut csize = u32_at(b, p + 20).ok_or_else(trunc)? as u64;
        let mut usize_ = u32_at(b, p + 24).ok_or_else(trunc)? as u64;
        let nlen = u16_at(b, p + 28).ok_or_else(trunc)? as usize;
        let elen = u16_at(b, p + 30).ok_or_else(trunc)? as usize;
        let clen = u16_at(b, p + 32).ok_or_else(trunc)? as usize;
        let mut local = u32_at(b, p + 42).ok_or_else(trunc)? as u64;
        let name_bytes = b.get(p + 46..p + 46 + nlen).ok_or_else(trunc)?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        // The zip64 extra field holds, in order, whichever of the sizes/offset overflowed.
        let extra = b.get(p + 46 + nlen..p + 46 + nlen + elen).ok_or_else(trunc)?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e).unwrap();
            let len = u16_at(extra, e + 2).unwrap() as usize;
            if id == 0x0001 {
                let mut q = e + 4;
                for field in [&mut usize_, &mut csize, &mut local] {
                    if *field == 0xFFFF_FFFF {
                        *field = u64_at(extra, q).ok_or_else(trunc)?;
                        q += 8;
                    }
                }
            }
            e += 4 + len;
        }
        if flags & 1 != 0 {
            return Err(format!("zip entry `{name}` is encrypted"));
        }
        if method != 0 {
            return Err(format!(
                "zip entry `{name}` is compressed (method {method}); torch.save writes stored entries, re-save the checkpoint with torch.save"
            ));
        }
        if csize != usize_ {
            return Err(format!("zip entry `{name}`: stored entry with differing sizes"));
        }
        let l = local as usize;
        if u32_at(b, l) != Some(LOCAL_SIG) {
            return Err(format!("zip entry `{name}`: bad local header (truncated or corrupt archive)"));
        }
        let lnlen = u16_at(b, l + 26).ok_or_else(trunc)? as usize;
        let lelen = u16_at(b, l + 28).ok_or_else(trunc)? as usize;
        let start = l + 30 + lnlen + lelen;
        let end = (start as u64).checked_add(csize).ok_or_else(trunc)?;
        if end > b.len() as u64 {
            return Err(format!("zip entry `{name}` runs past the end of the file (truncated archive)"));
        }
        out.push(Entry { name, start, end: end as usize, crc32 });
        p += 46 + nlen + elen + clen;
    }
    Ok(out)
}

/// CRC-32 (IEEE), used to check the small pickle entry before parsing it: the same CRC as
/// PNG chunks, so the host's one implementation serves both.
pub fn crc32(data: &[u8]) -> u32 {
    dfrt::video::png::crc32(&[data])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
