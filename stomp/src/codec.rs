//! STOMP 1.2 frame codec for tokio-util's `Framed`.
//!
//! Invariant: end-of-line bytes between frames are heart-beats and are consumed
//! as such (ActiveMQ writes one after every frame's NUL), so a buffer holding
//! only EOLs never looks like a partial frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Largest frame accepted from the broker.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `SEND`, `MESSAGE`, `RECEIPT`, ...
    pub command: String,
    /// Headers in order; on repeats the first one wins when read.
    pub headers: Vec<(String, String)>,
    /// The body, possibly empty.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: &str) -> Self {
        Self { command: command.to_string(), headers: Vec::new(), body: Bytes::new() }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A whole frame.
    Frame(Frame),
    /// One or more bare end-of-lines: the peer is alive.
    Heartbeat,
}

/// Errors of the codec.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Socket error.
    #[error("i/o")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not STOMP.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// STOMP 1.2 codec.
#[derive(Debug, Default, Clone, Copy)]
pub struct StompCodec;

fn escape(value: &str, out: &mut BytesMut) {
    for b in value.bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b':' => out.put_slice(b"\\c"),
            other => out.put_u8(other),
        }
    }
}

fn unescape(raw: &str) -> Result<String, CodecError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('c') => out.push(':'),
            other => return Err(CodecError::Malformed(format!("bad escape \\{other:?}"))),
        }
    }
    Ok(out)
}

impl StompCodec {
    fn encode_frame(frame: Frame, dst: &mut BytesMut) {
        // CONNECT headers are not escaped (STOMP 1.2 §"Value Encoding").
        let raw = frame.command == "CONNECT";
        dst.reserve(frame.command.len() + frame.body.len() + 64 * (frame.headers.len() + 1));
        dst.put_slice(frame.command.as_bytes());
        dst.put_u8(b'\n');
        for (k, v) in &frame.headers {
            if raw {
                dst.put_slice(k.as_bytes());
                dst.put_u8(b':');
                dst.put_slice(v.as_bytes());
            } else {
                escape(k, dst);
                dst.put_u8(b':');
                escape(v, dst);
            }
            dst.put_u8(b'\n');
        }
        if !frame.body.is_empty() && frame.get("content-length").is_none() {
            dst.put_slice(format!("content-length:{}\n", frame.body.len()).as_bytes());
        }
        dst.put_u8(b'\n');
        dst.put_slice(&frame.body);
        dst.put_u8(0);
    }
}

impl Encoder<Item> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Item, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Item::Frame(frame) => Self::encode_frame(frame, dst),
            Item::Heartbeat => dst.put_u8(b'\n'),
        }
        Ok(())
    }
}

impl Decoder for StompCodec {
    type Item = Item;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        let eols = src.iter().take_while(|b| **b == b'\n' || **b == b'\r').count();
        if eols > 0 {
            src.advance(eols);
            return Ok(Some(Item::Heartbeat));
        }
        let Some(head_end) = find_head_end(src) else {
            if src.len() > MAX_FRAME_BYTES {
                return Err(CodecError::Malformed("header section too large".into()));
            }
            return Ok(None);
        };
        let head = std::str::from_utf8(&src[..head_end.0])
            .map_err(|_| CodecError::Malformed("headers are not UTF-8".into()))?;
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let command = lines.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (k, v) =
                line.split_once(':').ok_or_else(|| CodecError::Malformed(format!("header without colon: {line:?}")))?;
            headers.push((unescape(k)?, unescape(v)?));
        }
        let body_start = head_end.1;
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.trim().parse::<usize>())
            .transpose()
            .map_err(|_| CodecError::Malformed("bad content-length".into()))?;
        let body_end = match length {
            Some(len) => {
                if len > MAX_FRAME_BYTES {
                    return Err(CodecError::Malformed("frame too large".into()));
                }
                if src.len() < body_start + len + 1 {
                    src.reserve(body_start + len + 1 - src.len());
                    return Ok(None);
                }
                if src[body_start + len] != 0 {
                    return Err(CodecError::Malformed("body not followed by NUL".into()));
                }
                body_start + len
            }
            None => match src[body_start..].iter().position(|b| *b == 0) {
                Some(pos) => body_start + pos,
                None if src.len() > MAX_FRAME_BYTES => {
                    return Err(CodecError::Malformed("frame too large".into()));
                }
                None => return Ok(None),
            },
        };
        let mut frame_bytes = src.split_to(body_end + 1);
        frame_bytes.truncate(body_end);
        let body = frame_bytes.split_off(body_start).freeze();
        Ok(Some(Item::Frame(Frame { command, headers, body })))
    }
}

/// Finds the blank line ending the headers: (end of header text, start of body).
fn find_head_end(src: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < src.len() {
        if src[i] == b'\n' {
            if src.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if src.get(i + 1) == Some(&b'\r') && src.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Item> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = StompCodec.decode(&mut buf).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn a_frame_round_trips_with_escaped_headers() {
        let frame = Frame::new("SEND").header("destination", "/queue/a").header("odd:key", "line\nbreak\\").body("{}");
        let mut buf = BytesMut::new();
        StompCodec.encode(Item::Frame(frame.clone()), &mut buf).unwrap();
        let items = decode_all(&buf);
        let Item::Frame(back) = &items[0] else { panic!("frame expected") };
        assert_eq!(back.command, "SEND");
        assert_eq!(back.get("odd:key"), Some("line\nbreak\\"));
        assert_eq!(back.get("content-length"), Some("2"));
        assert_eq!(back.body, Bytes::from("{}"));
    }

    #[test]
    fn eols_after_a_frame_are_heartbeats_not_pending_data() {
        let items = decode_all(b"RECEIPT\nreceipt-id:7\n\n\0\n\n");
        assert_eq!(items.len(), 2);
        assert!(matches!(items[1], Item::Heartbeat));
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut buf = BytesMut::from(&b"MESSAGE\ncontent-length:5\n\nhel"[..]);
        assert!(StompCodec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"lo\0");
        let Some(Item::Frame(f)) = StompCodec.decode(&mut buf).unwrap() else { panic!("frame expected") };
        assert_eq!(f.body, Bytes::from("hello"));
    }

    #[test]
    fn a_body_may_contain_nul_when_its_length_is_given() {
        let Item::Frame(f) = &decode_all(b"MESSAGE\ncontent-length:3\n\na\0b\0")[0] else { panic!() };
        assert_eq!(&f.body[..], b"a\0b");
    }

    #[test]
    fn crlf_line_endings_are_accepted() {
        let Item::Frame(f) = &decode_all(b"CONNECTED\r\nversion:1.2\r\n\r\n\0")[0] else { panic!() };
        assert_eq!(f.get("version"), Some("1.2"));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut buf = BytesMut::from(&b"MESSAGE\nno-colon\n\n\0"[..]);
        assert!(StompCodec.decode(&mut buf).is_err());
    }
}
