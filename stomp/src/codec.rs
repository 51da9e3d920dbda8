//! STOMP 1.2 frame codec for tokio-util's `Framed`.
//!
//! Invariants: end-of-line bytes between frames are heart-beats and are
//! consumed as such (ActiveMQ writes one after every frame's NUL), so a buffer
//! holding only EOLs never looks like a partial frame. What a frame *holds*
//! never fails the stream: a header the grammar does not allow (an undefined
//! escape, no colon, bytes that are not UTF-8) or a `content-length` that is
//! no length is kept as it came or dropped, and named in [`Cut::defects`]; the
//! frame is read to its NUL like any other. Only a stream with no frame
//! boundary to resync on is an error, and the error says at which frame and
//! byte. A decoded frame holds at most [`MAX_FRAME_BYTES`], whatever it carries.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Largest body kept whole. A larger one is read and dropped as it streams
/// in, all but its first [`BODY_PREFIX_BYTES`], and its size noted in
/// [`Frame::cut`], so a frame of any size costs a bounded amount of memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// What is kept of a body over [`MAX_BODY_BYTES`].
pub const BODY_PREFIX_BYTES: usize = 4 * 1024;
/// Header bytes kept per frame besides the protocol's own headers (the first
/// of each of [`PROTOCOL_HEADERS`]), each header counted as its line plus
/// [`HEADER_COST`]; further headers are dropped and counted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest header line kept (ActiveMQ refuses lines over 10 KiB).
pub const MAX_HEADER_LINE: usize = 16 * 1024;
/// Longest line of a protocol header kept outside [`MAX_HEADER_BYTES`]: far
/// more than a broker's own headers or a W3C `tracestate` (512 bytes) need. A
/// longer one is dropped and counted like a header over the budget.
pub const MAX_PROTOCOL_LINE: usize = 1024;
/// What a kept header costs besides its bytes: its slot and its two strings'
/// allocations, so that a frame of many tiny headers is bounded as well.
pub const HEADER_COST: usize = 64;
/// The most a decoded frame holds: its kept body, its ordinary headers and
/// the first of each protocol header, each header with its [`HEADER_COST`].
/// Prefetch times this bounds what a subscriber holds in frames.
pub const MAX_FRAME_BYTES: usize =
    MAX_BODY_BYTES + MAX_HEADER_BYTES + PROTOCOL_HEADERS.len() * (MAX_PROTOCOL_LINE + HEADER_COST);
/// Defects named per frame; any further ones are only counted.
const MAX_DEFECTS: usize = 4;
/// Characters of a header shown in a defect.
const SHOWN_CHARS: usize = 64;

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `SEND`, `MESSAGE`, `RECEIPT`, ...
    pub command: String,
    /// Headers in order; on repeats the first one wins when read.
    pub headers: Vec<(String, String)>,
    /// The body, possibly empty.
    pub body: Bytes,
    /// What the decoder dropped of a frame over its limits, or found amiss in
    /// it; `None` when the frame is whole and well-formed.
    pub cut: Option<Cut>,
}

/// What the decoder dropped of a frame over its limits, and what it found in
/// the frame that STOMP 1.2 does not allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cut {
    /// The body's whole length, when only its first [`BODY_PREFIX_BYTES`] were kept.
    pub body_bytes: Option<usize>,
    /// Headers dropped: over [`MAX_HEADER_BYTES`], a line over [`MAX_HEADER_LINE`],
    /// or a protocol header's line over [`MAX_PROTOCOL_LINE`].
    pub headers_dropped: usize,
    /// What was wrong, for a person: which header, and how it breaks the
    /// grammar (at most a few are named; `defects_more` counts the rest). A
    /// header with an undefined escape is kept with its text as it came; a
    /// line that cannot be read as a header is dropped.
    pub defects: Vec<String>,
    /// Defects found beyond those named.
    pub defects_more: usize,
}

impl Cut {
    fn defect(&mut self, what: String) {
        if self.defects.len() < MAX_DEFECTS {
            self.defects.push(what);
        } else {
            self.defects_more += 1;
        }
    }
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
    /// The byte stream lost its frame boundaries: nothing after this point
    /// can be read as frames. The text says why and where.
    #[error("malformed stream: {0}")]
    Malformed(String),
}

/// STOMP 1.2 codec: one per connection direction (the decoder keeps the state
/// of the frame it is reading, and where it is in the stream).
#[derive(Debug, Default)]
pub struct StompCodec {
    state: State,
    /// Frames decoded so far.
    frames: u64,
    /// Bytes consumed so far.
    consumed: u64,
    /// Where the frame being read started.
    frame_start: u64,
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

/// The text with STOMP 1.2's escapes undone; the escape the grammar does
/// not define, when there is one.
fn unescape(raw: &str) -> Result<String, String> {
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
            Some(other) => return Err(format!("the undefined escape {:?}", format!("\\{other}"))),
            None => return Err("a backslash at its end".into()),
        }
    }
    Ok(out)
}

/// A header's text for a defect: quoted, and cut to a few dozen characters.
fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
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

    /// One turn of the decoder; an error is the reason the stream is lost.
    fn step(&mut self, src: &mut BytesMut, at: u64) -> Result<Option<Item>, String> {
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
                    self.frame_start = at;
                    // Room for the headers a broker's MESSAGE carries, grown once at most.
                    self.state = State::Head(Head { headers: Vec::with_capacity(16), ..Head::default() });
                }
                State::Head(head) => {
                    let Some(pos) = src.iter().position(|b| *b == b'\n') else {
                        if src.len() > MAX_HEADER_LINE {
                            if head.command.is_none() {
                                return Err(format!("no command within {MAX_HEADER_LINE} bytes"));
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
                    if head.command.is_none() && pos > MAX_HEADER_LINE {
                        return Err(format!("no command within {MAX_HEADER_LINE} bytes"));
                    }
                    let line = src.split_to(pos + 1);
                    if std::mem::take(&mut head.skipping_line) {
                        continue;
                    }
                    let line = line[..pos].strip_suffix(b"\r").unwrap_or(&line[..pos]);
                    if head.command.is_none() {
                        head.command = Some(String::from_utf8_lossy(line).into_owned());
                    } else if line.is_empty() {
                        let head = std::mem::take(head);
                        self.state = State::Body(Body::after(head));
                    } else {
                        head.add(line);
                    }
                }
                State::Body(body) => {
                    if !body.read(src)? {
                        return Ok(None);
                    }
                    let State::Body(body) = std::mem::replace(&mut self.state, State::Idle) else { unreachable!() };
                    self.frames += 1;
                    return Ok(Some(Item::Frame(body.into_frame())));
                }
            }
        }
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
        let before = src.len();
        let at = self.consumed;
        let decoded = self.step(src, at);
        self.consumed += (before - src.len()) as u64;
        decoded.map_err(|reason| {
            CodecError::Malformed(format!(
                "{reason} (frame {} of the stream, starting at byte {})",
                self.frames + 1,
                self.frame_start
            ))
        })
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
    /// Cost of the ordinary headers kept so far (see [`HEADER_COST`]).
    kept: usize,
    /// Inside a header line over [`MAX_HEADER_LINE`].
    skipping_line: bool,
    cut: Cut,
}

/// Headers always kept (the first of each, within [`MAX_PROTOCOL_LINE`]):
/// what routes, acknowledges and checks a message, whatever else it carries.
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
    /// Keeps one header line, or drops it; anything amiss is a defect, never an error.
    fn add(&mut self, line: &[u8]) {
        let Ok(text) = std::str::from_utf8(line) else {
            let lossy = String::from_utf8_lossy(line);
            let name = lossy.split_once(':').map_or(&*lossy, |(k, _)| k);
            self.cut.defect(format!("header {} is not UTF-8; dropped", shown(name)));
            return;
        };
        let Some((k, v)) = text.split_once(':') else {
            self.cut.defect(format!("header line {} has no colon; dropped", shown(text)));
            return;
        };
        // CONNECT and CONNECTED headers are not escaped (STOMP 1.2 §"Value Encoding").
        let raw = matches!(self.command.as_deref(), Some("CONNECT" | "CONNECTED"));
        let name = if raw { k.to_string() } else { self.unescaped(k, || format!("the name of header {}", shown(k))) };
        let protocol = PROTOCOL_HEADERS.contains(&name.as_str()) && !self.headers.iter().any(|(n, _)| *n == name);
        let cost = line.len() + HEADER_COST;
        if protocol && line.len() > MAX_PROTOCOL_LINE || !protocol && self.kept + cost > MAX_HEADER_BYTES {
            self.cut.headers_dropped += 1;
            return;
        }
        if !protocol {
            self.kept += cost;
        }
        let value =
            if raw { v.to_string() } else { self.unescaped(v, || format!("the value of header {}", shown(&name))) };
        self.headers.push((name, value));
    }

    /// `text` unescaped; as it came, with a defect, when it holds an escape
    /// the grammar does not define (ActiveMQ passes header names through as
    /// its producers wrote them).
    fn unescaped(&mut self, text: &str, what: impl FnOnce() -> String) -> String {
        match unescape(text) {
            Ok(plain) => plain,
            Err(why) => {
                self.cut.defect(format!("{} holds {why}; kept as it came", what()));
                text.to_string()
            }
        }
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
    fn after(head: Head) -> Self {
        let mut cut = head.cut;
        let length = head.headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| {
            let length = v.trim().parse::<usize>().ok().filter(|_| v.trim().bytes().all(|b| b.is_ascii_digit()));
            if length.is_none() {
                cut.defect(format!("content-length {} is not a length; the body is read to its NUL", shown(v)));
            }
            length
        });
        if length.is_some_and(|len| len > MAX_BODY_BYTES) {
            cut.body_bytes = length;
        }
        let mut headers = head.headers;
        if headers.capacity() > 2 * headers.len().max(16) {
            headers.shrink_to_fit();
        }
        Self { command: head.command.unwrap_or_default(), headers, cut, length, kept: BytesMut::new(), seen: 0 }
    }

    /// Takes what `src` holds of the body; true once the frame's NUL is read.
    fn read(&mut self, src: &mut BytesMut) -> Result<bool, String> {
        let keep_up_to = if self.cut.body_bytes.is_some() { BODY_PREFIX_BYTES } else { MAX_BODY_BYTES };
        let (take, done) = match self.length {
            Some(len) if src.len() > len - self.seen => {
                if src[len - self.seen] != 0 {
                    return Err(format!("the body's content-length {len} is not followed by NUL"));
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
        // Copied, never split off the read buffer: a frame in hand must not
        // keep a whole (possibly grown) read buffer alive.
        self.kept.extend_from_slice(&src[..room]);
        src.advance(take);
        self.seen += take;
        src.advance(usize::from(done));
        if self.length.is_none() && self.seen > MAX_BODY_BYTES && self.cut.body_bytes.is_none() {
            // No length given and past the limit: keep the prefix, skip to the NUL.
            self.cut.body_bytes = Some(self.seen);
            self.kept = BytesMut::from(&self.kept[..BODY_PREFIX_BYTES]);
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
        // Exactly the body's bytes: no spare capacity outlives the read.
        let body = if self.kept.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&self.kept) };
        Frame { command: self.command, headers: self.headers, body, cut }
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

    /// The first frame of `bytes` and what was amiss in it.
    fn first_frame(bytes: &[u8]) -> (Frame, Vec<String>) {
        let Item::Frame(f) = decode_all(bytes).remove(0) else { panic!("a frame") };
        let defects = f.cut.clone().map(|c| c.defects).unwrap_or_default();
        (f, defects)
    }

    #[test]
    fn a_header_name_with_an_undefined_escape_is_kept_as_it_came_and_named() {
        let wire = b"MESSAGE\nmessage-id:ID:1\nack:a-1\nx\\q:v\ncontent-length:2\n\n{}\0MESSAGE\nack:a-2\n\nnext\0";
        let items = decode_all(wire);
        let Item::Frame(f) = &items[0] else { panic!() };
        assert_eq!((f.get("ack"), f.get("x\\q"), &f.body[..]), (Some("a-1"), Some("v"), &b"{}"[..]));
        let defects = &f.cut.as_ref().expect("the defect is told").defects;
        assert_eq!(defects.len(), 1);
        assert!(defects[0].contains(r#"the name of header "x\\q" holds the undefined escape "\\q""#), "{defects:?}");
        let Item::Frame(next) = &items[1] else { panic!() };
        assert_eq!((next.get("ack"), &next.body[..], &next.cut), (Some("a-2"), &b"next"[..], &None));
    }

    #[test]
    fn a_value_ending_in_a_backslash_is_kept_and_named() {
        let (f, defects) = first_frame(b"MESSAGE\nnote:abc\\\n\n\0");
        assert_eq!(f.get("note"), Some("abc\\"));
        assert!(defects[0].contains(r#"the value of header "note" holds a backslash at its end"#), "{defects:?}");
    }

    #[test]
    fn a_header_line_without_a_colon_or_not_utf8_is_dropped_and_named() {
        let (f, defects) = first_frame(b"MESSAGE\nack:a-1\nno-colon\nbad\xff\xfe:v\n\nbody\0");
        assert_eq!((f.headers.len(), &f.body[..]), (1, &b"body"[..]));
        assert!(defects[0].contains(r#"header line "no-colon" has no colon"#), "{defects:?}");
        assert!(defects[1].contains("is not UTF-8"), "{defects:?}");
    }

    #[test]
    fn a_content_length_that_is_no_length_is_named_and_the_body_read_to_its_nul() {
        for odd in ["", "-1", "+2", "2x", " ", "99999999999999999999999", "0x2"] {
            let wire = format!("MESSAGE\ncontent-length:{odd}\n\n{{}}\0MESSAGE\n\nnext\0");
            let items = decode_all(wire.as_bytes());
            let Item::Frame(f) = &items[0] else { panic!() };
            assert_eq!(&f.body[..], b"{}", "{odd:?}");
            assert!(f.cut.as_ref().unwrap().defects[0].contains("is not a length"), "{odd:?}");
            assert!(matches!(&items[1], Item::Frame(n) if &n.body[..] == b"next"), "{odd:?}");
        }
    }

    #[test]
    fn only_a_stream_without_frame_boundaries_is_an_error_and_it_says_where() {
        let mut buf = BytesMut::from(&b"RECEIPT\nreceipt-id:1\n\n\0\nMESSAGE\ncontent-length:2\n\nabc\0"[..]);
        let mut codec = StompCodec::default();
        let mut error = None;
        while error.is_none() {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => panic!("an error expected"),
                Err(e) => error = Some(e.to_string()),
            }
        }
        let error = error.unwrap();
        assert!(error.contains("content-length 2 is not followed by NUL"), "{error}");
        assert!(error.contains("frame 2 of the stream, starting at byte 24"), "{error}");
        let mut buf = BytesMut::from(vec![b'X'; MAX_HEADER_LINE + 1].as_slice());
        assert!(StompCodec::default().decode(&mut buf).unwrap_err().to_string().contains("no command"));
    }

    #[test]
    fn many_defects_are_counted_beyond_the_named_ones() {
        let mut wire = b"MESSAGE\n".to_vec();
        for i in 0..10 {
            wire.extend_from_slice(format!("h{i}\\z:v\n").as_bytes());
        }
        wire.extend_from_slice(b"\n\0");
        let cut = first_frame(&wire).0.cut.unwrap();
        assert_eq!((cut.defects.len(), cut.defects_more), (MAX_DEFECTS, 10 - MAX_DEFECTS));
    }

    /// What a frame's headers cost, counted as the decoder counts them.
    fn header_cost(f: &Frame) -> usize {
        f.headers.iter().map(|(k, v)| k.len() + v.len() + 1 + HEADER_COST).sum()
    }

    #[test]
    fn headers_of_any_shape_stay_within_the_frame_bound() {
        // Tiny headers by the thousand, every protocol name at its longest and
        // again, and escapes that shrink when unescaped.
        let mut wire = b"MESSAGE\n".to_vec();
        for i in 0..5000 {
            wire.extend_from_slice(format!("{i}:\n").as_bytes());
        }
        for name in PROTOCOL_HEADERS {
            for len in [MAX_PROTOCOL_LINE - name.len() - 1, 4000] {
                wire.extend_from_slice(format!("{name}:{}\n", "p".repeat(len)).as_bytes());
            }
        }
        wire.extend_from_slice(b"\n\0");
        let (f, _) = first_frame(&wire);
        assert!(f.get("ack").is_some_and(|v| v.len() == MAX_PROTOCOL_LINE - 4), "the protocol's own are kept");
        assert!(header_cost(&f) <= MAX_FRAME_BYTES - MAX_BODY_BYTES, "{} bytes of headers", header_cost(&f));
        assert!(f.headers.capacity() <= 2 * f.headers.len().max(16), "no slack beyond doubling");
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
        let frame =
            Frame::new("MESSAGE").header("k", "v".repeat(MAX_HEADER_BYTES - HEADER_COST - 2)).body(body.clone());
        let mut buf = BytesMut::new();
        StompCodec::default().encode(Item::Frame(frame), &mut buf).unwrap();
        let (frames, _) = decode_streamed(&buf, 1000);
        assert_eq!((frames[0].cut.clone(), frames[0].body.len()), (None, MAX_BODY_BYTES));
    }
}
