//! gRPC's length-prefixed messages: a flags byte (bit 0: compressed; in
//! gRPC-Web, bit 7: the trailers), a big-endian 32-bit length, the bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The flag of gRPC-Web's trailers frame.
pub const TRAILERS: u8 = 0x80;

/// The flag of a compressed message.
pub const COMPRESSED: u8 = 0x01;

/// `message` with its prefix.
pub fn frame(flags: u8, message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(flags);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Why a stream of messages could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// A message longer than the limit.
    #[error("a gRPC message of {0} bytes, over the limit")]
    TooLarge(usize),
    /// The stream ended inside a message.
    #[error("the stream ended inside a gRPC message")]
    Truncated,
}

/// Messages cut out of bytes as they arrive.
pub struct Deframer {
    buffer: BytesMut,
    max: usize,
}

impl Deframer {
    /// Messages of at most `max` bytes.
    pub fn new(max: usize) -> Deframer {
        Deframer {
            buffer: BytesMut::new(),
            max,
        }
    }

    /// More of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message and its flags, if one is in.
    pub fn next_message(&mut self) -> Result<Option<(u8, Bytes)>, FrameError> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        let length = u32::from_be_bytes(self.buffer[1..5].try_into().expect("four bytes")) as usize;
        if length > self.max {
            return Err(FrameError::TooLarge(length));
        }
        if self.buffer.len() < 5 + length {
            return Ok(None);
        }
        let flags = self.buffer.get_u8();
        self.buffer.advance(4);
        Ok(Some((flags, self.buffer.split_to(length).freeze())))
    }

    /// At the stream's end: an error if a message was left half-read.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffer.is_empty() {
            true => Ok(()),
            false => Err(FrameError::Truncated),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cut_across_pushes() {
        let mut stream = frame(0, b"one").to_vec();
        stream.extend_from_slice(&frame(TRAILERS, b"two"));
        let mut deframer = Deframer::new(16);
        let mut seen = Vec::new();
        for byte in stream {
            deframer.push(&[byte]);
            while let Some(message) = deframer.next_message().unwrap() {
                seen.push(message);
            }
        }
        assert_eq!(
            seen,
            [(0, Bytes::from("one")), (TRAILERS, Bytes::from("two"))]
        );
        deframer.finish().unwrap();
    }

    #[test]
    fn limits_and_truncation() {
        let mut deframer = Deframer::new(2);
        deframer.push(&frame(0, b"long"));
        assert_eq!(deframer.next_message(), Err(FrameError::TooLarge(4)));
        let mut deframer = Deframer::new(16);
        deframer.push(&frame(0, b"cut")[..6]);
        assert_eq!(deframer.next_message(), Ok(None));
        assert_eq!(deframer.finish(), Err(FrameError::Truncated));
    }
}
