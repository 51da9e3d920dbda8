//! STOMP 1.2 frame codec for tokio-util's `Framed`.
//!
//! Invariant: end-of-line bytes between frames are heart-beats and are consumed
//! as such (ActiveMQ writes one after every frame's NUL), so a buffer holding
//! only EOLs never looks like a partial frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Largest body kept whole. A larger one is read and dropped as it streams
/// in, all but its first [`BODY_PREFIX_BYTES`], and its size noted in
/// [`Frame::cut`], so a frame of any size costs a bounded amount of memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// What is kept of a body over [`MAX_BODY_BYTES`].
pub const BODY_PREFIX_BYTES: usize = 4 * 1024;
/// Header bytes kept per frame besides the protocol's own headers (the first
/// of each of [`PROTOCOL_HEADERS`]); further headers are dropped and counted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest header line kept (ActiveMQ refuses lines over 10 KiB).
pub const MAX_HEADER_LINE: usize = 16 * 1024;

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `SEND`, `MESSAGE`, `RECEIPT`, ...
    pub command: String,
    /// Headers in order; on repeats the first one wins when read.
    pub headers: Vec<(String, String)>,
    /// The body, possibly empty.
    pub body: Bytes,
    /// What the decoder dropped of a frame over its limits; `None` when the
    /// frame is whole.
    pub cut: Option<Cut>,
}

/// What the decoder dropped of an oversized frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cut {
    /// The body's whole length, when only its first [`BODY_PREFIX_BYTES`] were kept.
    pub body_bytes: Option<usize>,
    /// Headers dropped: over [`MAX_HEADER_BYTES`], or a line over [`MAX_HEADER_LINE`].
    pub headers_dropped: usize,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: &str) -> Self {
        Self { command: command.to_string(), headers: Vec::new(), body: Bytes::new(), cut: None }
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

/// STOMP 1.2 codec: one per connection direction (the decoder keeps the state
/// of the frame it is reading).
#[derive(Debug, Default)]
pub struct StompCodec {
    state: State,
}

fn escape(value: &str, out: &mut BytesMut) {
    if !value.bytes().any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b':')) {
        out.put_slice(value.as_bytes());
        return;
    }
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
    if !raw.contains('\\') {
        return Ok(raw.to_string());
    }
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
        // CONNECT and CONNECTED headers are not escaped (STOMP 1.2 §"Value Encoding").
        let raw = matches!(frame.command.as_str(), "CONNECT" | "CONNECTED");
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
        loop {
            match &mut self.state {
                State::Idle => {
                    let eols = src.iter().take_while(|b| **b == b'\n' || **b == b'\r').count();
                    if eols > 0 {
                        src.advance(eols);
                        return Ok(Some(Item::Heartbeat));
                    }
                    if src.is_empty() {
                        return Ok(None);
                    }
                    // Room for the headers a broker's MESSAGE carries, grown once at most.
                    self.state = State::Head(Head { headers: Vec::with_capacity(16), ..Head::default() });
                }
                State::Head(head) => {
                    let Some(pos) = src.iter().position(|b| *b == b'\n') else {
                        if src.len() > MAX_HEADER_LINE {
                            if head.command.is_none() {
                                return Err(CodecError::Malformed("command line too long".into()));
                            }
                            // A header line over the limit: dropped as it streams in.
                            if !head.skipping_line {
                                head.skipping_line = true;
                                head.cut.headers_dropped += 1;
                            }
                            src.clear();
                        }
                        return Ok(None);
                    };
                    let line = src.split_to(pos + 1);
                    if std::mem::take(&mut head.skipping_line) {
                        continue;
                    }
                    let line = line[..pos].strip_suffix(b"\r").unwrap_or(&line[..pos]);
                    let text =
                        std::str::from_utf8(line).map_err(|_| CodecError::Malformed("headers are not UTF-8".into()))?;
                    if head.command.is_none() {
                        head.command = Some(text.to_string());
                    } else if text.is_empty() {
                        let head = std::mem::take(head);
                        self.state = State::Body(Body::after(head)?);
                    } else {
                        head.add(text)?;
                    }
                }
                State::Body(body) => {
                    if !body.read(src)? {
                        return Ok(None);
                    }
                    let State::Body(body) = std::mem::replace(&mut self.state, State::Idle) else { unreachable!() };
                    return Ok(Some(Item::Frame(body.into_frame())));
                }
            }
        }
    }
}

/// Where the decoder is in the frame it is reading.
#[derive(Debug, Default)]
enum State {
    /// Between frames: end-of-lines here are heart-beats.
    #[default]
    Idle,
    /// Reading the command and header lines.
    Head(Head),
    /// Reading (and past the limit, skipping) the body.
    Body(Body),
}

#[derive(Debug, Default)]
struct Head {
    command: Option<String>,
    headers: Vec<(String, String)>,
    /// Header bytes kept so far, besides the protocol's own headers.
    kept: usize,
    /// Inside a header line over [`MAX_HEADER_LINE`].
    skipping_line: bool,
    cut: Cut,
}

/// Headers always kept (the first of each): what routes, acknowledges and
/// checks a message, whatever else it carries.
const PROTOCOL_HEADERS: [&str; 16] = [
    "message-id",
    "ack",
    "subscription",
    "destination",
    "content-length",
    "content-type",
    "receipt-id",
    "message",
    "version",
    "heart-beat",
    "session",
    "server",
    "outbox-id",
    "order-id",
    "traceparent",
    "tracestate",
];

impl Head {
    fn add(&mut self, line: &str) -> Result<(), CodecError> {
        let (k, v) =
            line.split_once(':').ok_or_else(|| CodecError::Malformed(format!("header without colon: {line:?}")))?;
        // CONNECT and CONNECTED headers are not escaped (STOMP 1.2 §"Value Encoding").
        let raw = matches!(self.command.as_deref(), Some("CONNECT" | "CONNECTED"));
        let unescape = |text: &str| if raw { Ok(text.to_string()) } else { unescape(text) };
        let name = unescape(k)?;
        let protocol = PROTOCOL_HEADERS.contains(&name.as_str()) && !self.headers.iter().any(|(n, _)| *n == name);
        if !protocol && self.kept + line.len() > MAX_HEADER_BYTES {
            self.cut.headers_dropped += 1;
            return Ok(());
        }
        if !protocol {
            self.kept += line.len();
        }
        self.headers.push((name, unescape(v)?));
        Ok(())
    }
}

#[derive(Debug)]
struct Body {
    command: String,
    headers: Vec<(String, String)>,
    cut: Cut,
    /// The body's length when given; else it ends at the first NUL.
    length: Option<usize>,
    /// Bytes kept: all of a body within [`MAX_BODY_BYTES`], else its prefix.
    kept: BytesMut,
    /// Body bytes read so far, kept or not.
    seen: usize,
}

impl Body {
    fn after(head: Head) -> Result<Self, CodecError> {
        let length = head
            .headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map(|(_, v)| v.trim().parse::<usize>())
            .transpose()
            .map_err(|_| CodecError::Malformed("bad content-length".into()))?;
        let mut cut = head.cut;
        if length.is_some_and(|len| len > MAX_BODY_BYTES) {
            cut.body_bytes = length;
        }
        Ok(Self {
            command: head.command.unwrap_or_default(),
            headers: head.headers,
            cut,
            length,
            kept: BytesMut::new(),
            seen: 0,
        })
    }

    /// Takes what `src` holds of the body; true once the frame's NUL is read.
    fn read(&mut self, src: &mut BytesMut) -> Result<bool, CodecError> {
        let keep_up_to = if self.cut.body_bytes.is_some() { BODY_PREFIX_BYTES } else { MAX_BODY_BYTES };
        let (take, done) = match self.length {
            Some(len) if src.len() > len - self.seen => {
                if src[len - self.seen] != 0 {
                    return Err(CodecError::Malformed("body not followed by NUL".into()));
                }
                (len - self.seen, true)
            }
            Some(_) => (src.len(), false),
            None => match src.iter().position(|b| *b == 0) {
                Some(pos) => (pos, true),
                None => (src.len(), false),
            },
        };
        let room = keep_up_to.saturating_sub(self.kept.len()).min(take);
        if self.kept.is_empty() && room == take {
            // A body read whole in one go is kept where it was read, uncopied.
            self.kept = src.split_to(take);
        } else {
            self.kept.extend_from_slice(&src[..room]);
            src.advance(take);
        }
        self.seen += take;
        src.advance(usize::from(done));
        if self.length.is_none() && self.seen > MAX_BODY_BYTES && self.cut.body_bytes.is_none() {
            // No length given and past the limit: keep the prefix, skip to the NUL.
            self.cut.body_bytes = Some(self.seen);
            self.kept.truncate(BODY_PREFIX_BYTES);
        }
        if done && self.length.is_none() && self.cut.body_bytes.is_some() {
            self.cut.body_bytes = Some(self.seen);
        }
        if let (false, Some(len)) = (done, self.length)
            && len - self.seen < MAX_BODY_BYTES
            && self.cut.body_bytes.is_none()
        {
            src.reserve(len - self.seen + 1);
        }
        Ok(done)
    }

    fn into_frame(self) -> Frame {
        let cut = (self.cut != Cut::default()).then_some(self.cut);
        Frame { command: self.command, headers: self.headers, body: self.kept.freeze(), cut }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Item> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(item) = StompCodec::default().decode(&mut buf).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn a_frame_round_trips_with_escaped_headers() {
        let frame = Frame::new("SEND").header("destination", "/queue/a").header("odd:key", "line\nbreak\\").body("{}");
        let mut buf = BytesMut::new();
        StompCodec::default().encode(Item::Frame(frame.clone()), &mut buf).unwrap();
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
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::from(&b"MESSAGE\ncontent-length:5\n\nhel"[..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"lo\0");
        let Some(Item::Frame(f)) = codec.decode(&mut buf).unwrap() else { panic!("frame expected") };
        assert_eq!(f.body, Bytes::from("hello"));
    }

    #[test]
    fn a_body_fed_a_byte_at_a_time_is_whole_and_so_is_the_next_frame() {
        for wire in
            [&b"MESSAGE\ncontent-length:5\n\nhello\0MESSAGE\n\nnext\0"[..], b"MESSAGE\n\nhello\0MESSAGE\n\nnext\0"]
        {
            let (mut codec, mut buf, mut bodies) = (StompCodec::default(), BytesMut::new(), Vec::new());
            for byte in wire {
                buf.extend_from_slice(&[*byte]);
                while let Some(item) = codec.decode(&mut buf).unwrap() {
                    let Item::Frame(f) = item else { panic!("frame expected") };
                    bodies.push(f.body);
                }
            }
            assert_eq!(bodies, [Bytes::from("hello"), Bytes::from("next")]);
        }
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
    fn connect_and_connected_headers_are_not_unescaped() {
        let Item::Frame(f) = &decode_all(b"CONNECTED\nserver:ActiveMQ\\5.17\nversion:1.2\n\n\0")[0] else { panic!() };
        assert_eq!(f.get("server"), Some("ActiveMQ\\5.17"), "a backslash is a backslash here");
        let frame = Frame::new("CONNECT").header("login", "a\\b").header("passcode", "p\\c");
        let mut buf = BytesMut::new();
        StompCodec::default().encode(Item::Frame(frame.clone()), &mut buf).unwrap();
        let Item::Frame(back) = &decode_all(&buf)[0] else { panic!() };
        assert_eq!(back.headers, frame.headers, "encoded and decoded alike");
    }

    #[test]
    fn garbage_is_an_error() {
        let mut buf = BytesMut::from(&b"MESSAGE\nno-colon\n\n\0"[..]);
        assert!(StompCodec::default().decode(&mut buf).is_err());
    }

    /// Feeds `bytes` in chunks as a socket would; the frames, and the largest
    /// the buffer ever grew.
    fn decode_streamed(bytes: &[u8], chunk: usize) -> (Vec<Frame>, usize) {
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::new();
        let (mut frames, mut peak) = (Vec::new(), 0);
        for piece in bytes.chunks(chunk) {
            buf.extend_from_slice(piece);
            peak = peak.max(buf.len());
            while let Some(item) = codec.decode(&mut buf).unwrap() {
                if let Item::Frame(f) = item {
                    frames.push(f);
                }
            }
        }
        (frames, peak)
    }

    #[test]
    fn a_body_over_the_limit_is_cut_to_its_prefix_without_being_buffered() {
        let big = 17 << 20;
        for with_length in [true, false] {
            let mut bytes = b"MESSAGE\nmessage-id:ID:1\nack:a-1\n".to_vec();
            if with_length {
                bytes.extend_from_slice(format!("content-length:{big}\n").as_bytes());
            }
            bytes.extend_from_slice(b"\n");
            bytes.extend(std::iter::repeat_n(b'x', big));
            bytes.extend_from_slice(b"\0\nRECEIPT\nreceipt-id:9\n\n\0");
            let (frames, peak) = decode_streamed(&bytes, 8192);
            assert_eq!(frames.len(), 2, "the frame after it is read too");
            let cut = frames[0].cut.clone().expect("cut");
            assert_eq!((cut.body_bytes, cut.headers_dropped), (Some(big), 0));
            assert_eq!(frames[0].body.len(), BODY_PREFIX_BYTES);
            assert_eq!((frames[0].get("message-id"), frames[0].get("ack")), (Some("ID:1"), Some("a-1")));
            assert!(peak <= 2 * 8192, "never buffered: {peak}");
            assert_eq!((frames[1].get("receipt-id"), &frames[1].cut), (Some("9"), &None));
        }
    }

    #[test]
    fn headers_over_the_limit_are_dropped_and_the_protocols_own_kept() {
        let mut bytes = b"MESSAGE\n".to_vec();
        for i in 0..1000 {
            bytes.extend_from_slice(format!("h{i}:{}\n", "v".repeat(10_000)).as_bytes());
        }
        bytes.extend_from_slice(format!("long:{}\n", "w".repeat(MAX_HEADER_LINE + 5)).as_bytes());
        bytes.extend_from_slice(b"message-id:ID:7\nack:a-7\nmessage-id:ID:spoof\ncontent-length:2\n\n{}\0");
        let (frames, peak) = decode_streamed(&bytes, 4096);
        let f = &frames[0];
        assert_eq!((f.get("message-id"), f.get("ack"), &f.body[..]), (Some("ID:7"), Some("a-7"), &b"{}"[..]));
        let cut = f.cut.clone().expect("cut");
        assert_eq!(cut.body_bytes, None);
        assert_eq!(cut.headers_dropped, 999 + 1, "all but the first of the 10 kB ones, and the long line");
        assert!(f.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= MAX_HEADER_BYTES + 64);
        assert!(peak <= MAX_HEADER_LINE + 4096, "{peak}");
    }

    #[test]
    fn frames_within_the_limits_are_whole() {
        let body = "é".repeat(MAX_BODY_BYTES / 2);
        let frame = Frame::new("MESSAGE").header("k", "v".repeat(MAX_HEADER_LINE - 8)).body(body.clone());
        let mut buf = BytesMut::new();
        StompCodec::default().encode(Item::Frame(frame), &mut buf).unwrap();
        let (frames, _) = decode_streamed(&buf, 1000);
        assert_eq!((frames[0].cut.clone(), frames[0].body.len()), (None, MAX_BODY_BYTES));
    }
}
