//! Reads the committed IVF test files and VP8 keyframe headers.

/// The frames of an IVF file (32-byte file header, then 12-byte frame
/// headers each followed by one VP8 frame).
pub fn frames(ivf: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(&ivf[..4], b"DKIF", "not an IVF file");
    let header_len = u16::from_le_bytes([ivf[6], ivf[7]]) as usize;
    let mut frames = Vec::new();
    let mut at = header_len;
    while at + 12 <= ivf.len() {
        let len = u32::from_le_bytes(ivf[at..at + 4].try_into().unwrap()) as usize;
        at += 12;
        frames.push(ivf[at..at + len].to_vec());
        at += len;
    }
    frames
}

pub fn layer_file(name: &str) -> Vec<Vec<u8>> {
    let bytes = match name {
        "l" => include_bytes!("../media/vp8-l.ivf").as_slice(),
        "m" => include_bytes!("../media/vp8-m.ivf").as_slice(),
        "h" => include_bytes!("../media/vp8-h.ivf").as_slice(),
        "single" => include_bytes!("../media/vp8-single.ivf").as_slice(),
        other => panic!("no test file {other}"),
    };
    frames(bytes)
}

pub use sft::load::synthetic::keyframe_width;

/// The keyframe width of each test layer.
pub fn width_of(layer: &str) -> u16 {
    match layer {
        "l" => 80,
        "m" => 160,
        "h" => 320,
        "single" => 176,
        other => panic!("no layer {other}"),
    }
}
