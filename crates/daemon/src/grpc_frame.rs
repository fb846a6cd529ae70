//! The gRPC length-prefixed message framing (1 flag byte, 4 length bytes).

use bytes::{BufMut, Bytes, BytesMut};

/// kubelet's CRI message size limit (and so lazarus's for decoded calls).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Size of the frame header.
pub const HEADER_LEN: usize = 5;

/// Why a unary body is not one plain gRPC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than 5 bytes, or fewer bytes than the header announces.
    Truncated,
    /// More than one message in a unary body.
    TrailingData,
    /// The message is compressed (`grpc-encoding`); lazarus does not decode those.
    Compressed,
    /// Larger than the limit.
    TooLarge(usize),
}

impl FrameError {
    /// A short explanation.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Truncated => "truncated frame",
            FrameError::TrailingData => "more than one message in a unary call",
            FrameError::Compressed => "compressed message",
            FrameError::TooLarge(_) => "message too large",
        }
    }
}

/// Returns the message bytes of a body that holds exactly one uncompressed frame.
pub fn unary_message(body: &Bytes, limit: usize) -> Result<Bytes, FrameError> {
    if body.len() < HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len > limit {
        return Err(FrameError::TooLarge(len));
    }
    if body[0] != 0 {
        return Err(FrameError::Compressed);
    }
    let end = HEADER_LEN + len;
    if body.len() < end {
        return Err(FrameError::Truncated);
    }
    if body.len() > end {
        return Err(FrameError::TrailingData);
    }
    Ok(body.slice(HEADER_LEN..end))
}

/// Frames one uncompressed message.
pub fn encode(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + message.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let framed = encode(b"hello");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(unary_message(&framed, 100), Ok(Bytes::from_static(b"hello")));
        assert_eq!(unary_message(&encode(b""), 100), Ok(Bytes::new()));
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(unary_message(&Bytes::from_static(&[0, 0]), 100), Err(FrameError::Truncated));
        assert_eq!(unary_message(&Bytes::from_static(&[0, 0, 0, 0, 9, 1]), 100), Err(FrameError::Truncated));
        let mut two = encode(b"a").to_vec();
        two.extend_from_slice(&encode(b"b"));
        assert_eq!(unary_message(&Bytes::from(two), 100), Err(FrameError::TrailingData));
        assert_eq!(unary_message(&Bytes::from_static(&[1, 0, 0, 0, 1, 7]), 100), Err(FrameError::Compressed));
        assert_eq!(unary_message(&Bytes::from_static(&[0, 0, 0, 1, 0]), 100), Err(FrameError::TooLarge(256)));
    }
}
