//! Arbitrary byte streams through the WebSocket frame cursor, as the relay
//! reads them: in pieces cut wherever the input says. Wherever the cuts
//! fall, the cursor finds exactly the frame ends a whole-buffer reference
//! parse of RFC 6455 §5.2 finds, a step never runs past one (the relay
//! stops forwarding there when a session ends), and it ends in the same
//! state as when fed the stream whole.
//!
//! Input: one byte whose low 3 bits are the number of cuts, two bytes
//! (little-endian) per cut, then the stream.
#![no_main]

use authgate::pipeline::websocket::FrameCursor;
use libfuzzer_sys::fuzz_target;

/// The end offsets of the complete frames in `stream`, found without any
/// state carried between reads: the frame header is decoded in one go.
fn reference_ends(stream: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.len() < 2 {
            return ends;
        }
        let extended = match rest[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if rest[1] & 0x80 != 0 { 4 } else { 0 };
        let header = 2 + extended + mask;
        if rest.len() < header {
            return ends;
        }
        let payload = match extended {
            2 => u64::from(u16::from_be_bytes([rest[2], rest[3]])),
            8 => u64::from_be_bytes(rest[2..10].try_into().unwrap()),
            _ => u64::from(rest[1] & 0x7f),
        };
        if payload > (rest.len() - header) as u64 {
            return ends;
        }
        at += header + payload as usize;
        ends.push(at);
    }
}

/// Feeds `pieces` in order the way the relay does (step after step within
/// one read) and returns the offsets at which the cursor stood at a frame
/// boundary, checking each step against the reference ends on the way.
fn feed(cursor: &mut FrameCursor, pieces: &[&[u8]], ends: &[usize]) -> Vec<usize> {
    let mut boundaries = Vec::new();
    let mut at = 0;
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() {
            let used = cursor.step(rest);
            assert!(
                used >= 1 && used <= rest.len(),
                "step used {used} of {}",
                rest.len()
            );
            // No frame end strictly inside the bytes this step consumed.
            assert!(
                !ends.iter().any(|&e| at < e && e < at + used),
                "step [{at}, {}) ran past a frame end",
                at + used
            );
            at += used;
            rest = &rest[used..];
            if cursor.at_boundary() {
                boundaries.push(at);
            } else {
                // A step stops early only at a frame's end.
                assert!(rest.is_empty(), "step stopped mid-frame at {at}");
            }
        }
    }
    boundaries
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let cuts = usize::from(head & 7);
    if rest.len() < 2 * cuts {
        return;
    }
    let (cut_bytes, stream) = rest.split_at(2 * cuts);
    let mut at: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for &cut in &at {
        pieces.push(&stream[from..cut]);
        from = cut;
    }
    pieces.push(&stream[from..]);

    let ends = reference_ends(stream);
    let mut split = FrameCursor::default();
    let split_boundaries = feed(&mut split, &pieces, &ends);
    let mut whole = FrameCursor::default();
    let whole_boundaries = feed(&mut whole, &[stream], &ends);
    assert_eq!(split_boundaries, ends, "cuts at {at:?}");
    assert_eq!(whole_boundaries, ends);
    assert_eq!(split, whole, "cuts at {at:?}");
    let mut advanced = FrameCursor::default();
    for piece in &pieces {
        advanced.advance(piece);
    }
    assert_eq!(advanced, whole);
    let complete = ends.last().copied().unwrap_or(0) == stream.len();
    assert_eq!(whole.at_boundary(), complete);

    // Continued with zeros, the cursor resumes where the reference says
    // the frame in flight (or a new zero-length one) ends.
    const MORE: usize = 14;
    let mut longer = stream.to_vec();
    longer.extend_from_slice(&[0; MORE]);
    let next_end = reference_ends(&longer)
        .into_iter()
        .find(|&e| e > stream.len());
    let used = whole.step(&[0; MORE]);
    match next_end {
        Some(e) => {
            assert_eq!(stream.len() + used, e);
            assert!(whole.at_boundary());
        }
        None => {
            assert_eq!(used, MORE);
            assert!(!whole.at_boundary());
        }
    }
});
