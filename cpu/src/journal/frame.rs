//! The journal's bytes on disk: frames, segment headers, snapshots, and the rule that tells a
//! torn tail (the last write, cut short by a crash) from damage (bytes that changed after they
//! were written).
//!
//! **Frames.** A segment written by this version (`CADRSEG2`) holds frames
//! `len: u32 LE | hcrc: u32 LE | crc: u32 LE | payload`: `hcrc` is CRC32C over the length alone
//! (seeded, so a zero-filled header never passes), `crc` is CRC32C over the length and the
//! payload. The header checksum is what makes a length trustworthy before the payload is read:
//! a flipped bit in a length is caught as a damaged header, never taken for a frame that runs
//! past the end of the file. Segments written before it (`CADRSEG1`) hold
//! `len | crc(len, payload) | payload` and are still read. Snapshots are one frame of the older
//! shape (the whole file is that one frame, so its length is checked against the file's).
//!
//! **Torn or damaged.** A crash can only cut the *last* write short, so damage in the last
//! segment is a torn tail only if no intact frame follows it anywhere in the file (a later
//! frame is a write that came after, which a crash cannot produce), and, for a damaged header,
//! only if the bytes after it are not one intact record whose length field alone changed.
//! Everything else is corruption, which recovery refuses without changing a byte.

/// Bytes of a frame's header in a segment of this version: length, header CRC, payload CRC.
pub const FRAME_HEADER: usize = 12;
/// Bytes of a frame's header in segments written before the header CRC, and in snapshots.
pub const FRAME_HEADER_V1: usize = 8;

pub(crate) const SEGMENT_MAGIC_V1: &[u8; 8] = b"CADRSEG1";
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"CADRSEG2";
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"CADRSNP1";
const SNAPSHOT_PREFIX: usize = 16;

/// Seed of the header CRC, so the header of a zero-filled region never checks out.
const HEADER_SEED: u32 = 0x6361_6472;

/// How a segment's frames are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `len | crc | payload`: written before the header CRC existed.
    V1,
    /// `len | hcrc | crc | payload`.
    V2,
}

impl Format {
    pub(crate) fn header_len(self) -> usize {
        match self {
            Format::V1 => FRAME_HEADER_V1,
            Format::V2 => FRAME_HEADER,
        }
    }

    /// The format of a segment, from its first frame (the segment header); `None` when that
    /// frame is too damaged to tell.
    pub(crate) fn detect(data: &[u8]) -> Option<Format> {
        if data.get(FRAME_HEADER..FRAME_HEADER + 8) == Some(&SEGMENT_MAGIC[..]) {
            Some(Format::V2)
        } else if data.get(FRAME_HEADER_V1..FRAME_HEADER_V1 + 8) == Some(&SEGMENT_MAGIC_V1[..]) {
            Some(Format::V1)
        } else {
            None
        }
    }
}

fn header_crc(len: &[u8]) -> u32 {
    crc32c::crc32c_append(HEADER_SEED, len)
}

/// Frames `payload` onto `out` in this version's segment format.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&header_crc(&len).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Frames `payload` onto `out` in the older format (snapshots; segments of the previous
/// version, for tests that check they are still read).
pub fn encode_frame_v1(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// How the frame at some offset is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Fewer bytes left than a header needs.
    ShortHeader { left: usize },
    /// The header's own CRC fails: the length cannot be trusted (segments of this version).
    BadHeader,
    /// A length above the record limit.
    TooLong { len: u32 },
    /// A length that runs past the end of the data.
    PastEnd { len: u32, present: usize },
    /// A whole frame whose payload CRC does not match; it ends at `end`.
    BadPayload { want: u32, got: u32, end: usize },
}

impl Damage {
    pub(crate) fn describe(&self, max_record: u32) -> String {
        match self {
            Damage::ShortHeader { left } => {
                format!("{left} bytes left, a frame header needs more")
            }
            Damage::BadHeader => "the frame header's CRC32C does not match its length".into(),
            Damage::TooLong { len } => {
                format!("length {len} exceeds the {max_record}-byte limit")
            }
            Damage::PastEnd { len, present } => {
                format!("record of {len} bytes, only {present} present")
            }
            Damage::BadPayload { want, got, .. } => {
                format!("CRC32C {got:#010x} does not match {want:#010x}")
            }
        }
    }
}

/// Checks the frame at the start of `rest`; returns the payload's range and the frame's end,
/// relative to `rest`, or how it is broken.
pub(crate) fn parse_frame(
    rest: &[u8],
    format: Format,
    max_record: u32,
) -> Result<((usize, usize), usize), Damage> {
    let header_len = format.header_len();
    let Some(header) = rest.get(..header_len) else {
        return Err(Damage::ShortHeader { left: rest.len() });
    };
    let len_bytes = [header[0], header[1], header[2], header[3]];
    let len = u32::from_le_bytes(len_bytes);
    let crc_at = match format {
        Format::V1 => 4,
        Format::V2 => {
            let hcrc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if hcrc != header_crc(&len_bytes) {
                return Err(Damage::BadHeader);
            }
            8
        }
    };
    let crc = u32::from_le_bytes([
        header[crc_at],
        header[crc_at + 1],
        header[crc_at + 2],
        header[crc_at + 3],
    ]);
    if len > max_record {
        return Err(Damage::TooLong { len });
    }
    let end = header_len + len as usize;
    let Some(payload) = rest.get(header_len..end) else {
        return Err(Damage::PastEnd {
            len,
            present: rest.len() - header_len,
        });
    };
    let want = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
    if want != crc {
        return Err(Damage::BadPayload {
            want,
            got: crc,
            end,
        });
    }
    Ok(((header_len, end), end))
}

/// Payload ranges of the good frames, and where parsing stopped and why.
pub(crate) type Parsed = (Vec<(usize, usize)>, Option<(usize, Damage)>);

/// Parses frames from `data` until its end or the first broken one.
pub(crate) fn parse_frames(data: &[u8], format: Format, max_record: u32) -> Parsed {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        match parse_frame(&data[pos..], format, max_record) {
            Ok(((start, end), next)) => {
                out.push((pos + start, pos + end));
                pos += next;
            }
            Err(damage) => return (out, Some((pos, damage))),
        }
    }
    (out, None)
}

/// How much payload the search for a later frame in an older segment may checksum: its
/// lengths are unchecked, so every offset can claim a long frame. Past it, the tail is not
/// taken for torn (an operator looks instead).
const V1_SEARCH_BUDGET: usize = 256 << 20;

/// The first offset after `from` where an intact frame (any format when `format` is `None`)
/// begins, or `Err(())` when an older segment's search ran out of budget.
fn later_frame(
    data: &[u8],
    format: Option<Format>,
    from: usize,
    max_record: u32,
) -> Result<Option<usize>, ()> {
    let mut budget = V1_SEARCH_BUDGET;
    for at in from..data.len() {
        let rest = &data[at..];
        if format != Some(Format::V1) && parse_frame(rest, Format::V2, max_record).is_ok() {
            return Ok(Some(at));
        }
        if format != Some(Format::V2) && rest.len() >= FRAME_HEADER_V1 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len <= max_record as usize && FRAME_HEADER_V1 + len <= rest.len() {
                budget = budget.checked_sub(len + FRAME_HEADER_V1).ok_or(())?;
                if parse_frame(rest, Format::V1, max_record).is_ok() {
                    return Ok(Some(at));
                }
            }
        }
    }
    Ok(None)
}

/// What the damage at `pos` in the last segment is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The last write, cut short: safe to set aside and cut off.
    Torn(String),
    /// Damage: refuse to start, change nothing.
    Corrupt(String),
}

/// Judges the damage at `pos` of the last segment's `data` (see the module comment).
pub(crate) fn judge_tail(
    data: &[u8],
    format: Option<Format>,
    pos: usize,
    damage: &Damage,
    max_record: u32,
) -> Verdict {
    let what = damage.describe(max_record);
    let fmt = format.unwrap_or(Format::V2);
    // A header with a checked CRC states a length the writer never exceeds.
    if let (Format::V2, Damage::TooLong { .. }) = (fmt, damage) {
        return Verdict::Corrupt(what);
    }
    // A damaged length over an intact record: its payload CRC (which covers the true length)
    // checks out for the length the file implies.
    if let Damage::BadHeader = damage {
        let rest = &data[pos..];
        if rest.len() >= FRAME_HEADER {
            let implied = ((rest.len() - FRAME_HEADER) as u32).to_le_bytes();
            let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
            let want = crc32c::crc32c_append(crc32c::crc32c(&implied), &rest[FRAME_HEADER..]);
            if want == crc {
                return Verdict::Corrupt(format!(
                    "{what}; the record after it is intact, so its length field was damaged after it was written"
                ));
            }
        }
    }
    match later_frame(data, format, pos + 1, max_record) {
        Ok(Some(at)) => Verdict::Corrupt(format!(
            "{what}; an intact frame follows at offset {at}, so this is damage, not a torn last write"
        )),
        Err(()) => Verdict::Corrupt(format!(
            "{what}; the bytes after it could not be searched for later records within the budget"
        )),
        Ok(None) => {
            // An older segment's impossible length is damage unless the rest is zeros (space
            // the file system extended but never wrote).
            if let (Format::V1, Damage::TooLong { .. }) = (fmt, damage) {
                if !data[pos..].iter().all(|&b| b == 0) {
                    return Verdict::Corrupt(what);
                }
            }
            Verdict::Torn(what)
        }
    }
}

/// The first frame of every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) index: u64,
    pub(crate) first_seq: u64,
}

impl SegmentHeader {
    pub(crate) fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(SEGMENT_MAGIC);
        out[8..16].copy_from_slice(&self.index.to_le_bytes());
        out[16..].copy_from_slice(&self.first_seq.to_le_bytes());
        out
    }

    pub(crate) fn decode(payload: &[u8]) -> Option<SegmentHeader> {
        let (magic, rest) = payload.split_first_chunk::<8>()?;
        let (index, rest) = rest.split_first_chunk::<8>()?;
        let (first_seq, rest) = rest.split_first_chunk::<8>()?;
        ((magic == SEGMENT_MAGIC || magic == SEGMENT_MAGIC_V1) && rest.is_empty()).then(|| {
            SegmentHeader {
                index: u64::from_le_bytes(*index),
                first_seq: u64::from_le_bytes(*first_seq),
            }
        })
    }

    /// The header of a segment in the older format, for tests of the upgrade path.
    pub(crate) fn encode_v1(&self) -> [u8; 24] {
        let mut out = self.encode();
        out[..8].copy_from_slice(SEGMENT_MAGIC_V1);
        out
    }
}

/// A snapshot's payload: magic, the sequence number of the first record after it, the state.
pub(crate) fn encode_snapshot(next_seq: u64, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_PREFIX + state.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&next_seq.to_le_bytes());
    out.extend_from_slice(state);
    out
}

pub(crate) fn decode_snapshot(payload: &[u8]) -> Option<(u64, &[u8])> {
    let (magic, rest) = payload.split_first_chunk::<8>()?;
    let (seq, state) = rest.split_first_chunk::<8>()?;
    (magic == SNAPSHOT_MAGIC).then(|| (u64::from_le_bytes(*seq), state))
}

/// A segment in the older format holding `records`, as the previous version wrote it (for
/// tests that check an upgraded node still reads it).
pub fn legacy_segment(index: u64, first_seq: u64, records: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_v1(&SegmentHeader { index, first_seq }.encode_v1(), &mut out);
    for r in records {
        encode_frame_v1(r, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn segment(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(
            &SegmentHeader {
                index: 0,
                first_seq: 0,
            }
            .encode(),
            &mut out,
        );
        for r in records {
            encode_frame(r, &mut out);
        }
        out
    }

    #[test]
    fn frames_round_trip_and_zeros_never_parse() {
        for format in [Format::V1, Format::V2] {
            let mut buf = Vec::new();
            let enc = match format {
                Format::V1 => encode_frame_v1,
                Format::V2 => encode_frame,
            };
            enc(b"hello", &mut buf);
            enc(b"", &mut buf);
            let (frames, damage) = parse_frames(&buf, format, 1024);
            assert!(damage.is_none());
            assert_eq!(frames.len(), 2);
            assert_eq!(&buf[frames[0].0..frames[0].1], b"hello");
            let zeros = [0u8; 64];
            let (frames, damage) = parse_frames(&zeros, format, 1024);
            assert!(frames.is_empty());
            assert!(damage.is_some());
        }
    }

    #[test]
    fn every_flipped_length_bit_of_a_middle_record_is_corruption() {
        let records: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 40 + i as usize]).collect();
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let data = segment(&refs);
        let (frames, _) = parse_frames(&data, Format::V2, 1 << 20);
        // Every record but the last; each frame's header starts FRAME_HEADER before its payload.
        for &(start, _) in &frames[1..frames.len() - 1] {
            let at = start - FRAME_HEADER;
            for bit in 0..32 {
                let mut bad = data.clone();
                bad[at + bit / 8] ^= 1 << (bit % 8);
                let (_, damage) = parse_frames(&bad, Format::V2, 1 << 20);
                let (pos, damage) = damage.expect("a flipped length is caught");
                assert_eq!(pos, at);
                let verdict = judge_tail(&bad, Some(Format::V2), pos, &damage, 1 << 20);
                assert!(
                    matches!(verdict, Verdict::Corrupt(_)),
                    "bit {bit}: {verdict:?}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_length_of_the_last_record_is_corruption_too() {
        let data = segment(&[b"one", b"two", b"three-is-last"]);
        let (frames, _) = parse_frames(&data, Format::V2, 1 << 20);
        let at = frames[frames.len() - 1].0 - FRAME_HEADER;
        let mut bad = data.clone();
        bad[at] ^= 0x04;
        let (_, damage) = parse_frames(&bad, Format::V2, 1 << 20);
        let (pos, damage) = damage.unwrap();
        match judge_tail(&bad, Some(Format::V2), pos, &damage, 1 << 20) {
            Verdict::Corrupt(reason) => assert!(reason.contains("intact"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cut_last_write_is_torn() {
        let data = segment(&[b"one", b"two", b"three"]);
        for cut in 1..(FRAME_HEADER + 5) {
            let short = &data[..data.len() - cut];
            let (_, damage) = parse_frames(short, Format::V2, 1 << 20);
            let (pos, damage) = damage.unwrap();
            let verdict = judge_tail(short, Some(Format::V2), pos, &damage, 1 << 20);
            assert!(
                matches!(verdict, Verdict::Torn(_)),
                "cut {cut}: {verdict:?}"
            );
        }
        let mut zeros = data.clone();
        zeros.extend_from_slice(&[0u8; 4096]);
        let (_, damage) = parse_frames(&zeros, Format::V2, 1 << 20);
        let (pos, damage) = damage.unwrap();
        assert!(matches!(
            judge_tail(&zeros, Some(Format::V2), pos, &damage, 1 << 20),
            Verdict::Torn(_)
        ));
    }

    #[test]
    fn an_older_segment_with_a_grown_length_followed_by_records_is_corruption() {
        let data = legacy_segment(0, 0, &[b"aaaa", b"bbbbbbbb", b"cccc", b"dddd"]);
        let (frames, _) = parse_frames(&data, Format::V1, 1 << 20);
        let at = frames[2].0 - FRAME_HEADER_V1;
        let mut bad = data.clone();
        bad[at] ^= 0x40; // 8 -> 72: runs past the end of this small file
        let (_, damage) = parse_frames(&bad, Format::V1, 1 << 20);
        let (pos, damage) = damage.unwrap();
        assert!(matches!(damage, Damage::PastEnd { .. }), "{damage:?}");
        assert!(matches!(
            judge_tail(&bad, Some(Format::V1), pos, &damage, 1 << 20),
            Verdict::Corrupt(_)
        ));
        assert_eq!(Format::detect(&bad), Some(Format::V1));
    }
}
