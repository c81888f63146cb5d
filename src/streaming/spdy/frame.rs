//! SPDY/3 frames on the wire (draft-mbelshe-httpbis-spdy-00, section 2):
//! the 8-byte frame header, every frame type Kubernetes streaming clients
//! send or expect, and the zlib-compressed name/value header blocks.
//!
//! [`FrameDecoder`] parses frames incrementally out of a read buffer and
//! [`FrameEncoder`] appends encoded frames to a write buffer. Each holds the
//! header compression context of one direction of a session, which lives as
//! long as the session: a session owns exactly one of each.

use std::collections::HashSet;
use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio_util::bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol version spoken here. SPDY/3.1 is SPDY/3 plus session flow
/// control and keeps version 3 in its frames.
pub const VERSION: u16 = 3;

/// The largest payload the 24-bit length field can describe.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;

/// The largest decompressed name/value header block accepted or sent.
/// Kubernetes headers are a few dozen bytes; the cap bounds what a small
/// compressed block may inflate to.
pub const MAX_HEADER_BLOCK_LEN: usize = 256 * 1024;

/// The largest control frame accepted: a header block up to
/// [`MAX_HEADER_BLOCK_LEN`] never compresses to more, so larger control
/// frames would be refused after inflating anyway.
pub const MAX_CONTROL_FRAME_LEN: usize = MAX_HEADER_BLOCK_LEN + 1024;

/// The largest stream id: stream ids are 31 bits.
pub const MAX_STREAM_ID: StreamId = 0x7fff_ffff;

/// A stream id (31 bits; odd when the client opened the stream).
pub type StreamId = u32;

const HEADER_LEN: usize = 8;
const CONTROL_BIT: u32 = 0x8000_0000;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;
const FLAG_SETTINGS_CLEAR: u8 = 0x01;
const DATA_FLAG_COMPRESS: u8 = 0x02;

/// The zlib dictionary every SPDY/3 header compression context starts
/// from (section 2.6.10.1 of the draft): length-prefixed common header
/// names and values, then common value fragments.
pub(crate) const DICTIONARY: &[u8] = b"\
\0\0\0\x07options\0\0\0\x04head\0\0\0\x04post\0\0\0\x03put\0\0\0\x06delete\
\0\0\0\x05trace\0\0\0\x06accept\0\0\0\x0eaccept-charset\0\0\0\x0faccept-encoding\
\0\0\0\x0faccept-language\0\0\0\x0daccept-ranges\0\0\0\x03age\0\0\0\x05allow\
\0\0\0\x0dauthorization\0\0\0\x0dcache-control\0\0\0\x0aconnection\
\0\0\0\x0ccontent-base\0\0\0\x10content-encoding\0\0\0\x10content-language\
\0\0\0\x0econtent-length\0\0\0\x10content-location\0\0\0\x0bcontent-md5\
\0\0\0\x0dcontent-range\0\0\0\x0ccontent-type\0\0\0\x04date\0\0\0\x04etag\
\0\0\0\x06expect\0\0\0\x07expires\0\0\0\x04from\0\0\0\x04host\0\0\0\x08if-match\
\0\0\0\x11if-modified-since\0\0\0\x0dif-none-match\0\0\0\x08if-range\
\0\0\0\x13if-unmodified-since\0\0\0\x0dlast-modified\0\0\0\x08location\
\0\0\0\x0cmax-forwards\0\0\0\x06pragma\0\0\0\x12proxy-authenticate\
\0\0\0\x13proxy-authorization\0\0\0\x05range\0\0\0\x07referer\0\0\0\x0bretry-after\
\0\0\0\x06server\0\0\0\x02te\0\0\0\x07trailer\0\0\0\x11transfer-encoding\
\0\0\0\x07upgrade\0\0\0\x0auser-agent\0\0\0\x04vary\0\0\0\x03via\0\0\0\x07warning\
\0\0\0\x10www-authenticate\0\0\0\x06method\0\0\0\x03get\0\0\0\x06status\
\0\0\0\x06200 OK\0\0\0\x07version\0\0\0\x08HTTP/1.1\0\0\0\x03url\0\0\0\x06public\
\0\0\0\x0aset-cookie\0\0\0\x0akeep-alive\0\0\0\x06origin\
100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently\
400 Bad Request401 Unauthorized403 Forbidden404 Not Found\
500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 \
Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,\
text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch\
charset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// Adler-32 of [`DICTIONARY`]: the dictionary id a peer's zlib stream names.
const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// Errors of the frame layer: malformed input from the peer, or a frame
/// that cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A control frame carries a version other than 3.
    #[error("control frame of SPDY version {0}; only version 3 is spoken")]
    UnsupportedVersion(u16),
    /// The frame header announces more payload than the decoder accepts.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The decoder's limit.
        max: usize,
    },
    /// A fixed-size control frame has the wrong length.
    #[error("{frame} frame with invalid length {len}")]
    BadLength {
        /// Frame type name.
        frame: &'static str,
        /// Payload length found.
        len: usize,
    },
    /// A frame that must name a stream names stream 0.
    #[error("{0} frame on stream 0")]
    ZeroStreamId(&'static str),
    /// A RST_STREAM with status 0, which the protocol does not define.
    #[error("RST_STREAM with status 0 on stream {0}")]
    ZeroRstStatus(StreamId),
    /// A DATA frame with FLAG_COMPRESS; no Kubernetes client sends them.
    #[error("compressed DATA frame on stream {0} (not supported)")]
    CompressedData(StreamId),
    /// The zlib stream of header blocks is corrupt or uses another dictionary.
    #[error("header block compression: {0}")]
    Compression(String),
    /// A header block inflates beyond [`MAX_HEADER_BLOCK_LEN`].
    #[error("header block exceeds {MAX_HEADER_BLOCK_LEN} bytes once decompressed")]
    HeaderBlockTooLarge,
    /// A header block decompressed fine but its content is invalid; the
    /// compression context is intact, so only the stream is affected.
    #[error("invalid header block on stream {stream_id}: {reason}")]
    InvalidHeaderBlock {
        /// The stream the block belongs to.
        stream_id: StreamId,
        /// What is wrong with it.
        reason: HeaderError,
    },
    /// An id or payload does not fit its wire field (encoding only).
    #[error("cannot encode {0}")]
    Unencodable(&'static str),
}

impl FrameError {
    /// The stream to reset, and with which status, when this error concerns
    /// one stream only; `None` when the session itself must end.
    pub fn stream_error(&self) -> Option<(StreamId, RstStatus)> {
        match self {
            FrameError::InvalidHeaderBlock { stream_id, .. } => {
                Some((*stream_id, RstStatus::PROTOCOL_ERROR))
            }
            FrameError::CompressedData(stream_id) => Some((*stream_id, RstStatus::PROTOCOL_ERROR)),
            _ => None,
        }
    }
}

/// What is wrong with a name/value header block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The block ends in the middle of a field.
    #[error("block ends inside a {0}")]
    Truncated(&'static str),
    /// Bytes follow the last announced pair.
    #[error("{0} bytes follow the last name/value pair")]
    TrailingBytes(usize),
    /// A name of zero length.
    #[error("empty header name")]
    EmptyName,
    /// A name with upper-case letters.
    #[error("header name {0:?} is not lower case")]
    NotLowercase(String),
    /// A name that appears twice in one block.
    #[error("header name {0:?} appears twice")]
    DuplicateName(String),
    /// A NUL inside a name.
    #[error("header name {0:?} contains NUL")]
    NulInName(String),
    /// A NUL inside a single value (values are NUL-separated on the wire).
    #[error("a value of header {0:?} contains NUL")]
    NulInValue(String),
    /// An empty value next to other values of the same name.
    #[error("header {0:?} has an empty value among several")]
    EmptyValue(String),
    /// A name or value that is not UTF-8.
    #[error("header name or value is not UTF-8")]
    NotUtf8,
}

/// Status code of a RST_STREAM frame. Unknown codes are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RstStatus(pub u32);

impl RstStatus {
    /// A generic protocol violation.
    pub const PROTOCOL_ERROR: Self = Self(1);
    /// A frame for a stream that is not open.
    pub const INVALID_STREAM: Self = Self(2);
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: Self = Self(3);
    /// The SPDY version of the stream is not supported.
    pub const UNSUPPORTED_VERSION: Self = Self(4);
    /// The stream is no longer needed.
    pub const CANCEL: Self = Self(5);
    /// The implementation failed, not the protocol.
    pub const INTERNAL_ERROR: Self = Self(6);
    /// The peer violated flow control.
    pub const FLOW_CONTROL_ERROR: Self = Self(7);
    /// A SYN_REPLY for a stream already open.
    pub const STREAM_IN_USE: Self = Self(8);
    /// Data or SYN_REPLY for a stream the peer has half-closed.
    pub const STREAM_ALREADY_CLOSED: Self = Self(9);
    /// The client certificate does not cover the origin.
    pub const INVALID_CREDENTIALS: Self = Self(10);
    /// A frame the endpoint cannot support.
    pub const FRAME_TOO_LARGE: Self = Self(11);

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "PROTOCOL_ERROR",
            2 => "INVALID_STREAM",
            3 => "REFUSED_STREAM",
            4 => "UNSUPPORTED_VERSION",
            5 => "CANCEL",
            6 => "INTERNAL_ERROR",
            7 => "FLOW_CONTROL_ERROR",
            8 => "STREAM_IN_USE",
            9 => "STREAM_ALREADY_CLOSED",
            10 => "INVALID_CREDENTIALS",
            11 => "FRAME_TOO_LARGE",
            _ => return None,
        })
    }
}

impl fmt::Display for RstStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "status {}", self.0),
        }
    }
}

/// Status code of a GOAWAY frame. The SPDY/3 draft numbers INTERNAL_ERROR
/// 11 (Go's framer in spdystream says 2; its clients ignore the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoAwayStatus(pub u32);

impl GoAwayStatus {
    /// A normal end of the session.
    pub const OK: Self = Self(0);
    /// The peer violated the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1);
    /// The implementation failed.
    pub const INTERNAL_ERROR: Self = Self(11);
}

impl fmt::Display for GoAwayStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("OK"),
            1 => f.write_str("PROTOCOL_ERROR"),
            11 => f.write_str("INTERNAL_ERROR"),
            other => write!(f, "status {other}"),
        }
    }
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Setting id (24 bits on the wire).
    pub id: u32,
    /// Per-entry flags ([`Setting::FLAG_PERSIST_VALUE`], [`Setting::FLAG_PERSISTED`]).
    pub flags: u8,
    /// The value.
    pub value: u32,
}

impl Setting {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u32 = 4;
    /// SETTINGS_INITIAL_WINDOW_SIZE: the sender's receive window for new streams.
    pub const INITIAL_WINDOW_SIZE: u32 = 7;
    /// Entry flag: the sender asks the receiver to persist the value.
    pub const FLAG_PERSIST_VALUE: u8 = 0x01;
    /// Entry flag: the value was persisted earlier and is being returned.
    pub const FLAG_PERSISTED: u8 = 0x02;
}

/// A decoded SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA: payload of a stream.
    Data {
        /// The stream.
        stream_id: StreamId,
        /// FLAG_FIN: the sender's last frame on the stream.
        fin: bool,
        /// The payload.
        data: Bytes,
    },
    /// SYN_STREAM: the sender opens a stream.
    SynStream {
        /// The new stream.
        stream_id: StreamId,
        /// The stream this one is associated to (0 for none).
        associated_to: StreamId,
        /// Priority, 0 (highest) to 7.
        priority: u8,
        /// Credential slot (0 for none).
        slot: u8,
        /// FLAG_FIN: the opener sends nothing more.
        fin: bool,
        /// FLAG_UNIDIRECTIONAL: the receiver may not send on the stream.
        unidirectional: bool,
        /// The stream's headers.
        headers: Headers,
    },
    /// SYN_REPLY: the receiver of a SYN_STREAM accepts it.
    SynReply {
        /// The stream.
        stream_id: StreamId,
        /// FLAG_FIN: the replier sends nothing more.
        fin: bool,
        /// Reply headers.
        headers: Headers,
    },
    /// RST_STREAM: abnormal end of a stream.
    RstStream {
        /// The stream.
        stream_id: StreamId,
        /// Why.
        status: RstStatus,
    },
    /// SETTINGS: configuration for the session.
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        clear_persisted: bool,
        /// The entries, in wire order.
        entries: Vec<Setting>,
    },
    /// PING: answered by the receiver with the same id.
    Ping {
        /// Odd when the client pings, even when the server does.
        id: u32,
    },
    /// GOAWAY: the sender accepts no new streams.
    GoAway {
        /// The last stream the sender replied to (0 for none).
        last_good_stream_id: StreamId,
        /// Why.
        status: GoAwayStatus,
    },
    /// HEADERS: more headers for a stream.
    Headers {
        /// The stream.
        stream_id: StreamId,
        /// FLAG_FIN: the sender sends nothing more.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// WINDOW_UPDATE: the sender may receive `delta` more bytes on the
    /// stream (on the whole session when `stream_id` is 0, SPDY/3.1).
    WindowUpdate {
        /// The stream, or 0 for the session.
        stream_id: StreamId,
        /// Additional bytes the receiver of this frame may send (31 bits).
        delta: u32,
    },
}

impl Frame {
    /// The frame type's name as the specification spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Data { .. } => "DATA",
            Frame::SynStream { .. } => "SYN_STREAM",
            Frame::SynReply { .. } => "SYN_REPLY",
            Frame::RstStream { .. } => "RST_STREAM",
            Frame::Settings { .. } => "SETTINGS",
            Frame::Ping { .. } => "PING",
            Frame::GoAway { .. } => "GOAWAY",
            Frame::Headers { .. } => "HEADERS",
            Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
        }
    }
}

/// A name/value header block: lower-case names in order of first
/// appearance, each with one or more values (several values travel as one
/// NUL-separated value on the wire; an empty value stands alone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, Vec<String>)>,
}

impl Headers {
    /// An empty block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value to `name` (lower-cased). Refuses what the wire cannot
    /// carry: an empty name, NUL bytes, an empty value next to others.
    pub fn append(&mut self, name: &str, value: &str) -> Result<(), HeaderError> {
        let name = name.to_ascii_lowercase();
        if name.is_empty() {
            return Err(HeaderError::EmptyName);
        }
        if name.contains('\0') {
            return Err(HeaderError::NulInName(name));
        }
        if value.contains('\0') {
            return Err(HeaderError::NulInValue(name));
        }
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            None => self.fields.push((name, vec![value.to_owned()])),
            Some((_, values)) => {
                if value.is_empty() || values.iter().any(String::is_empty) {
                    return Err(HeaderError::EmptyValue(name));
                }
                values.push(value.to_owned());
            }
        }
        Ok(())
    }

    /// The first value of `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// Every value of `name`, compared case-insensitively.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + use<'a> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .into_iter()
            .flat_map(|(_, values)| values.iter().map(String::as_str))
    }

    /// Every (name, value) pair, names in order of first appearance.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .flat_map(|(n, values)| values.iter().map(move |v| (n.as_str(), v.as_str())))
    }

    /// The number of distinct names.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the block has no headers.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The uncompressed wire form: 32-bit pair count, then 32-bit length
    /// prefixed names and NUL-joined values.
    fn to_block(&self) -> Result<Vec<u8>, FrameError> {
        let mut block = Vec::new();
        block.put_u32(wire_len(self.fields.len())?);
        for (name, values) in &self.fields {
            block.put_u32(wire_len(name.len())?);
            block.put_slice(name.as_bytes());
            let joined = values.join("\0");
            block.put_u32(wire_len(joined.len())?);
            block.put_slice(joined.as_bytes());
        }
        if block.len() > MAX_HEADER_BLOCK_LEN {
            return Err(FrameError::Unencodable(
                "a header block over the size limit",
            ));
        }
        Ok(block)
    }

    /// Parses an uncompressed block, enforcing section 2.6.10.
    fn from_block(block: &[u8]) -> Result<Self, HeaderError> {
        let mut r = block;
        let count = take_u32(&mut r, "pair count")?;
        let mut seen = HashSet::new();
        let mut headers = Headers::new();
        for _ in 0..count {
            let name = take_str(&mut r, "name")?;
            let value = take_str(&mut r, "value")?;
            if name.is_empty() {
                return Err(HeaderError::EmptyName);
            }
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(HeaderError::NotLowercase(name.to_owned()));
            }
            if name.contains('\0') {
                return Err(HeaderError::NulInName(name.to_owned()));
            }
            if !seen.insert(name) {
                return Err(HeaderError::DuplicateName(name.to_owned()));
            }
            let values: Vec<String> = value.split('\0').map(str::to_owned).collect();
            if values.len() > 1 && values.iter().any(String::is_empty) {
                return Err(HeaderError::EmptyValue(name.to_owned()));
            }
            headers.fields.push((name.to_owned(), values));
        }
        if !r.is_empty() {
            return Err(HeaderError::TrailingBytes(r.len()));
        }
        Ok(headers)
    }
}

fn wire_len(len: usize) -> Result<u32, FrameError> {
    u32::try_from(len).map_err(|_| FrameError::Unencodable("a header field over 4 GiB"))
}

fn take_u32(r: &mut &[u8], what: &'static str) -> Result<u32, HeaderError> {
    let Some((head, rest)) = r.split_first_chunk::<4>() else {
        return Err(HeaderError::Truncated(what));
    };
    *r = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_str<'a>(r: &mut &'a [u8], what: &'static str) -> Result<&'a str, HeaderError> {
    let len = take_u32(r, what)? as usize;
    if r.len() < len {
        return Err(HeaderError::Truncated(what));
    }
    let (field, rest) = r.split_at(len);
    *r = rest;
    std::str::from_utf8(field).map_err(|_| HeaderError::NotUtf8)
}

/// Decodes frames from the bytes a peer sends, keeping the peer's header
/// decompression context.
pub struct FrameDecoder {
    inflate: Decompress,
    max_frame_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder accepting DATA frames of any length the field can describe.
    pub fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A decoder refusing frames whose payload exceeds `max_frame_len`
    /// bytes, and control frames over [`MAX_CONTROL_FRAME_LEN`] (checked
    /// from the frame header, before the payload arrives).
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        Self {
            inflate: Decompress::new(true),
            max_frame_len,
        }
    }

    /// Takes the next complete frame off the front of `buf`. `Ok(None)`
    /// means more bytes are needed: a partial frame stays in `buf`, which
    /// is given room for the rest of it. Unknown control frame types are
    /// consumed and skipped. After an error that is not a
    /// [`FrameError::stream_error`], the decoder and `buf` are unusable.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
                return Ok(None);
            };
            let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let flags = head[4];
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let control = word & CONTROL_BIT != 0;
            if control {
                let version = ((word >> 16) & 0x7fff) as u16;
                if version != VERSION {
                    return Err(FrameError::UnsupportedVersion(version));
                }
            }
            let max = if control {
                self.max_frame_len.min(MAX_CONTROL_FRAME_LEN)
            } else {
                self.max_frame_len
            };
            if len > max {
                return Err(FrameError::TooLarge { len, max });
            }
            if buf.len() < HEADER_LEN + len {
                buf.reserve(HEADER_LEN + len - buf.len());
                return Ok(None);
            }
            buf.advance(HEADER_LEN);
            let payload = buf.split_to(len).freeze();
            if !control {
                return decode_data(word & MAX_STREAM_ID, flags, payload).map(Some);
            }
            let kind = (word & 0xffff) as u16;
            if let Some(frame) = self.decode_control(kind, flags, &payload)? {
                return Ok(Some(frame));
            }
        }
    }

    /// Decodes one control frame's payload; `None` for unknown types.
    fn decode_control(
        &mut self,
        kind: u16,
        flags: u8,
        p: &[u8],
    ) -> Result<Option<Frame>, FrameError> {
        let fin = flags & FLAG_FIN != 0;
        let frame = match kind {
            SYN_STREAM => {
                let name = "SYN_STREAM";
                if p.len() < 10 {
                    return Err(FrameError::BadLength {
                        frame: name,
                        len: p.len(),
                    });
                }
                let stream_id = word_at(p, 0) & MAX_STREAM_ID;
                let headers = self.headers(stream_id, &p[10..])?;
                Frame::SynStream {
                    stream_id: nonzero(stream_id, name)?,
                    associated_to: word_at(p, 4) & MAX_STREAM_ID,
                    priority: p[8] >> 5,
                    slot: p[9],
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            SYN_REPLY | HEADERS => {
                let name = if kind == SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                if p.len() < 4 {
                    return Err(FrameError::BadLength {
                        frame: name,
                        len: p.len(),
                    });
                }
                let stream_id = word_at(p, 0) & MAX_STREAM_ID;
                let headers = self.headers(stream_id, &p[4..])?;
                let stream_id = nonzero(stream_id, name)?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                fixed_len(p, 8, "RST_STREAM")?;
                let stream_id = nonzero(word_at(p, 0) & MAX_STREAM_ID, "RST_STREAM")?;
                let status = word_at(p, 4);
                if status == 0 {
                    return Err(FrameError::ZeroRstStatus(stream_id));
                }
                Frame::RstStream {
                    stream_id,
                    status: RstStatus(status),
                }
            }
            SETTINGS => {
                let bad = FrameError::BadLength {
                    frame: "SETTINGS",
                    len: p.len(),
                };
                if p.len() < 4 {
                    return Err(bad);
                }
                let count = word_at(p, 0) as usize;
                if count.checked_mul(8).and_then(|n| n.checked_add(4)) != Some(p.len()) {
                    return Err(bad);
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| Setting {
                        flags: e[0],
                        id: word_at(e, 0) & 0x00ff_ffff,
                        value: word_at(e, 4),
                    })
                    .collect();
                Frame::Settings {
                    clear_persisted: flags & FLAG_SETTINGS_CLEAR != 0,
                    entries,
                }
            }
            PING => {
                fixed_len(p, 4, "PING")?;
                Frame::Ping { id: word_at(p, 0) }
            }
            GOAWAY => {
                fixed_len(p, 8, "GOAWAY")?;
                Frame::GoAway {
                    last_good_stream_id: word_at(p, 0) & MAX_STREAM_ID,
                    status: GoAwayStatus(word_at(p, 4)),
                }
            }
            WINDOW_UPDATE => {
                fixed_len(p, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: word_at(p, 0) & MAX_STREAM_ID,
                    delta: word_at(p, 4) & 0x7fff_ffff,
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }

    /// Inflates a header block through the session's context, then parses
    /// it. Inflating comes first so the context stays in step with the peer
    /// even when the content turns out invalid.
    fn headers(&mut self, stream_id: StreamId, compressed: &[u8]) -> Result<Headers, FrameError> {
        let block = self.inflate(compressed)?;
        Headers::from_block(&block)
            .map_err(|reason| FrameError::InvalidHeaderBlock { stream_id, reason })
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity((4 * input.len()).clamp(1024, 64 * 1024));
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity());
            }
            let (in_before, out_before) = (self.inflate.total_in(), self.inflate.total_out());
            let result =
                self.inflate
                    .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.inflate.total_in() - in_before) as usize;
            let progressed =
                self.inflate.total_in() != in_before || self.inflate.total_out() != out_before;
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(FrameError::Compression(
                        "the peer ended its zlib stream".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(DICTIONARY_ID) => {
                        self.inflate
                            .set_dictionary(DICTIONARY)
                            .map_err(|e| FrameError::Compression(e.to_string()))?;
                        continue;
                    }
                    Some(other) => {
                        return Err(FrameError::Compression(format!(
                            "the peer uses dictionary {other:#010x}, not SPDY/3's"
                        )));
                    }
                    None => return Err(FrameError::Compression(e.to_string())),
                },
            }
            if out.len() > MAX_HEADER_BLOCK_LEN {
                return Err(FrameError::HeaderBlockTooLarge);
            }
            if pos == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !progressed {
                return Err(FrameError::Compression("zlib made no progress".into()));
            }
        }
    }
}

fn decode_data(stream_id: StreamId, flags: u8, data: Bytes) -> Result<Frame, FrameError> {
    let stream_id = nonzero(stream_id, "DATA")?;
    if flags & DATA_FLAG_COMPRESS != 0 {
        return Err(FrameError::CompressedData(stream_id));
    }
    Ok(Frame::Data {
        stream_id,
        fin: flags & FLAG_FIN != 0,
        data,
    })
}

fn word_at(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

fn fixed_len(p: &[u8], len: usize, frame: &'static str) -> Result<(), FrameError> {
    if p.len() == len {
        Ok(())
    } else {
        Err(FrameError::BadLength {
            frame,
            len: p.len(),
        })
    }
}

fn nonzero(stream_id: StreamId, frame: &'static str) -> Result<StreamId, FrameError> {
    if stream_id == 0 {
        Err(FrameError::ZeroStreamId(frame))
    } else {
        Ok(stream_id)
    }
}

/// Encodes frames for the peer, keeping our header compression context.
pub struct FrameEncoder {
    deflate: Compress,
    dictionary_set: bool,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameEncoder {
    /// An encoder with a fresh compression context.
    pub fn new() -> Self {
        Self {
            deflate: Compress::new(Compression::default(), true),
            dictionary_set: false,
        }
    }

    /// Appends `frame` to `dst`. On error nothing is appended; header
    /// blocks are checked before they are compressed, so only a failure
    /// inside zlib itself could leave the compression context changed.
    pub fn encode(&mut self, frame: &Frame, dst: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = dst.len();
        let result = self.encode_unchecked(frame, dst);
        if result.is_err() {
            dst.truncate(start);
        }
        result
    }

    fn encode_unchecked(&mut self, frame: &Frame, dst: &mut Vec<u8>) -> Result<(), FrameError> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let stream_id = encodable_id(*stream_id)?;
                if data.len() > MAX_FRAME_LEN {
                    return Err(FrameError::Unencodable("a DATA payload over 16 MiB"));
                }
                dst.put_u32(stream_id);
                dst.put_u32(u32::from(flag(*fin, FLAG_FIN)) << 24 | data.len() as u32);
                dst.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                let block = headers.to_block()?;
                let ids = [encodable_id(*stream_id)?, encodable_id(*associated_to)?];
                if *priority > 7 {
                    return Err(FrameError::Unencodable("a priority above 7"));
                }
                let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
                let start = control_header(dst, SYN_STREAM, flags);
                dst.put_u32(ids[0]);
                dst.put_u32(ids[1]);
                dst.put_u8(priority << 5);
                dst.put_u8(*slot);
                self.deflate_block(&block, dst)?;
                patch_len(dst, start);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let block = headers.to_block()?;
                let stream_id = encodable_id(*stream_id)?;
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let start = control_header(dst, kind, flag(*fin, FLAG_FIN));
                dst.put_u32(stream_id);
                self.deflate_block(&block, dst)?;
                patch_len(dst, start);
            }
            Frame::RstStream { stream_id, status } => {
                let stream_id = encodable_id(*stream_id)?;
                let start = control_header(dst, RST_STREAM, 0);
                dst.put_u32(stream_id);
                dst.put_u32(status.0);
                patch_len(dst, start);
            }
            Frame::Settings {
                clear_persisted,
                entries,
            } => {
                if entries.iter().any(|e| e.id > 0x00ff_ffff) {
                    return Err(FrameError::Unencodable("a setting id over 24 bits"));
                }
                if entries.len() > (MAX_FRAME_LEN - 4) / 8 {
                    return Err(FrameError::Unencodable("a SETTINGS frame over 16 MiB"));
                }
                let start =
                    control_header(dst, SETTINGS, flag(*clear_persisted, FLAG_SETTINGS_CLEAR));
                dst.put_u32(entries.len() as u32);
                for e in entries {
                    dst.put_u32(u32::from(e.flags) << 24 | e.id);
                    dst.put_u32(e.value);
                }
                patch_len(dst, start);
            }
            Frame::Ping { id } => {
                let start = control_header(dst, PING, 0);
                dst.put_u32(*id);
                patch_len(dst, start);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let last_good = encodable_id(*last_good_stream_id)?;
                let start = control_header(dst, GOAWAY, 0);
                dst.put_u32(last_good);
                dst.put_u32(status.0);
                patch_len(dst, start);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let stream_id = encodable_id(*stream_id)?;
                if *delta > 0x7fff_ffff {
                    return Err(FrameError::Unencodable("a window delta over 31 bits"));
                }
                let start = control_header(dst, WINDOW_UPDATE, 0);
                dst.put_u32(stream_id);
                dst.put_u32(*delta);
                patch_len(dst, start);
            }
        }
        Ok(())
    }

    /// Compresses one header block into `dst`, ending with a sync flush so
    /// the peer can inflate it without waiting for more.
    fn deflate_block(&mut self, block: &[u8], dst: &mut Vec<u8>) -> Result<(), FrameError> {
        if !self.dictionary_set {
            self.deflate
                .set_dictionary(DICTIONARY)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            self.dictionary_set = true;
        }
        let start_in = self.deflate.total_in();
        loop {
            dst.reserve(block.len() / 2 + 64);
            let consumed = (self.deflate.total_in() - start_in) as usize;
            self.deflate
                .compress_vec(&block[consumed..], dst, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            let consumed = (self.deflate.total_in() - start_in) as usize;
            // A flush is complete once zlib stops short of filling the buffer.
            if consumed == block.len() && dst.len() < dst.capacity() {
                return Ok(());
            }
        }
    }
}

fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

fn encodable_id(stream_id: StreamId) -> Result<u32, FrameError> {
    if stream_id > MAX_STREAM_ID {
        return Err(FrameError::Unencodable("a stream id over 31 bits"));
    }
    Ok(stream_id)
}

/// Writes a control frame header with a zero length; returns where the
/// frame starts so [`patch_len`] can fill the length in.
fn control_header(dst: &mut Vec<u8>, kind: u16, flags: u8) -> usize {
    let start = dst.len();
    dst.put_u32(CONTROL_BIT | u32::from(VERSION) << 16 | u32::from(kind));
    dst.put_u32(u32::from(flags) << 24);
    start
}

/// Fills in the 24-bit length of the control frame starting at `start`.
/// Payloads stay far below 16 MiB: header blocks are capped before
/// compression.
fn patch_len(dst: &mut [u8], start: usize) {
    let len = (dst.len() - start - HEADER_LEN) as u32;
    dst[start + 5..start + 8].copy_from_slice(&len.to_be_bytes()[1..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes from hex digits; spaces separate fields for the reader.
    fn bytes(hex_digits: &str) -> Vec<u8> {
        hex::decode(hex_digits.replace(' ', "")).expect("hex")
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (name, value) in pairs {
            h.append(name, value).expect("valid header");
        }
        h
    }

    fn encode_all(encoder: &mut FrameEncoder, frames: &[Frame]) -> BytesMut {
        let mut out = Vec::new();
        for frame in frames {
            encoder.encode(frame, &mut out).expect("encode");
        }
        BytesMut::from(&out[..])
    }

    fn decode_all(decoder: &mut FrameDecoder, buf: &mut BytesMut) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(buf).expect("decode") {
            frames.push(frame);
        }
        frames
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, FrameError> {
        FrameDecoder::new().decode(&mut BytesMut::from(bytes))
    }

    fn every_frame() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: headers(&[("streamtype", "error"), ("requestid", "0")]),
            },
            Frame::SynStream {
                stream_id: 0x7fff_fffd,
                associated_to: 1,
                priority: 7,
                slot: 9,
                fin: true,
                unidirectional: true,
                headers: Headers::new(),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            },
            Frame::SynReply {
                stream_id: 3,
                fin: true,
                headers: headers(&[("status", "200")]),
            },
            Frame::RstStream {
                stream_id: 5,
                status: RstStatus::REFUSED_STREAM,
            },
            Frame::RstStream {
                stream_id: 7,
                status: RstStatus(99),
            },
            Frame::Settings {
                clear_persisted: false,
                entries: vec![],
            },
            Frame::Settings {
                clear_persisted: true,
                entries: vec![
                    Setting {
                        id: Setting::MAX_CONCURRENT_STREAMS,
                        flags: 0,
                        value: 100,
                    },
                    Setting {
                        id: Setting::INITIAL_WINDOW_SIZE,
                        flags: Setting::FLAG_PERSIST_VALUE,
                        value: 1 << 20,
                    },
                ],
            },
            Frame::Ping { id: 1 },
            Frame::Ping { id: u32::MAX },
            Frame::GoAway {
                last_good_stream_id: 0,
                status: GoAwayStatus::OK,
            },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: GoAwayStatus::INTERNAL_ERROR,
            },
            Frame::Headers {
                stream_id: 1,
                fin: true,
                headers: headers(&[("x", "a"), ("x", "b")]),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 0x7fff_ffff,
            },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 1,
            },
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::new(),
            },
            Frame::Data {
                stream_id: 5,
                fin: false,
                data: Bytes::from(vec![7u8; 70_000]),
            },
        ]
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = every_frame();
        let mut buf = encode_all(&mut FrameEncoder::new(), &frames);
        let decoded = decode_all(&mut FrameDecoder::new(), &mut buf);
        assert_eq!(decoded, frames);
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }

    #[test]
    fn dictionary_is_the_spdy3_dictionary() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
        let mut deflate = Compress::new(Compression::default(), true);
        let adler = deflate.set_dictionary(DICTIONARY).expect("set dictionary");
        assert_eq!(adler, DICTIONARY_ID);
    }

    /// Header blocks produced by Python's zlib (compressobj with the
    /// SPDY/3 dictionary, one context, Z_SYNC_FLUSH after each block),
    /// framed by hand from the layouts in section 2.6 of the draft.
    #[test]
    fn decodes_header_blocks_from_another_zlib() {
        let first_block =
            "78bbe3c6a7c202e50e703a2b294a4dcc851625aca9a0800632388b20d196094ace8c0600000000ffff";
        let second_block = "c2aa1898bc53f2c1a5367b856e6e694e4926b868654802000000ffff";
        let mut wire = Vec::new();
        // SYN_STREAM, v3, no flags, length 10 + 41; stream 1, associated 0,
        // priority 3 (top three bits), slot 0.
        wire.extend(bytes("80030001 00000033 00000001 00000000 6000"));
        wire.extend(bytes(first_block));
        // HEADERS, v3, FIN, length 4 + 28; stream 1.
        wire.extend(bytes("80030008 01000020 00000001"));
        wire.extend(bytes(second_block));

        let frames = decode_all(&mut FrameDecoder::new(), &mut BytesMut::from(&wire[..]));
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    stream_id: 1,
                    associated_to: 0,
                    priority: 3,
                    slot: 0,
                    fin: false,
                    unidirectional: false,
                    headers: headers(&[("streamtype", "error"), ("requestid", "0")]),
                },
                Frame::Headers {
                    stream_id: 1,
                    fin: true,
                    headers: headers(&[
                        ("streamtype", "stdout"),
                        ("x-multi", "a"),
                        ("x-multi", "b")
                    ]),
                },
            ]
        );
        // The second block only makes sense in the first one's context.
        let alone = decode_one(&wire[8 + 51..]);
        assert!(
            matches!(alone, Err(FrameError::Compression(_))),
            "{alone:?}"
        );
    }

    #[test]
    fn decodes_hand_built_fixed_frames() {
        let cases: Vec<(&str, Frame)> = vec![
            ("80030006 00000004 00000007", Frame::Ping { id: 7 }),
            (
                "80030003 00000008 00000005 00000003",
                Frame::RstStream {
                    stream_id: 5,
                    status: RstStatus::REFUSED_STREAM,
                },
            ),
            // The reserved top bit of the stream id is ignored.
            (
                "80030003 00000008 80000005 00000005",
                Frame::RstStream {
                    stream_id: 5,
                    status: RstStatus::CANCEL,
                },
            ),
            (
                "80030007 00000008 00000009 00000001",
                Frame::GoAway {
                    last_good_stream_id: 9,
                    status: GoAwayStatus::PROTOCOL_ERROR,
                },
            ),
            (
                "80030009 00000008 00000003 00010000",
                Frame::WindowUpdate {
                    stream_id: 3,
                    delta: 0x10000,
                },
            ),
            (
                "80030004 01000014 00000002 00000004 00000064 01000007 00008000",
                Frame::Settings {
                    clear_persisted: true,
                    entries: vec![
                        Setting {
                            id: 4,
                            flags: 0,
                            value: 100,
                        },
                        Setting {
                            id: 7,
                            flags: 1,
                            value: 0x8000,
                        },
                    ],
                },
            ),
            (
                "00000003 01000003 616263",
                Frame::Data {
                    stream_id: 3,
                    fin: true,
                    data: Bytes::from_static(b"abc"),
                },
            ),
            (
                "00000001 00000000",
                Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: Bytes::new(),
                },
            ),
        ];
        for (hex_bytes, want) in cases {
            let bytes = bytes(hex_bytes);
            let got = decode_one(&bytes).expect("decode");
            assert_eq!(got, Some(want), "{hex_bytes}");
        }
    }

    #[test]
    fn encodes_fixed_frames_as_the_spec_lays_them_out() {
        let cases = [
            (Frame::Ping { id: 7 }, "8003000600000004 00000007"),
            (
                Frame::RstStream {
                    stream_id: 5,
                    status: RstStatus::CANCEL,
                },
                "8003000300000008 00000005 00000005",
            ),
            (
                Frame::WindowUpdate {
                    stream_id: 0,
                    delta: 0x8000,
                },
                "8003000900000008 00000000 00008000",
            ),
            (
                Frame::GoAway {
                    last_good_stream_id: 3,
                    status: GoAwayStatus::OK,
                },
                "8003000700000008 00000003 00000000",
            ),
            (
                Frame::Data {
                    stream_id: 1,
                    fin: true,
                    data: Bytes::from_static(b"hi"),
                },
                "0000000101000002 6869",
            ),
        ];
        for (frame, want) in cases {
            let mut out = Vec::new();
            FrameEncoder::new()
                .encode(&frame, &mut out)
                .expect("encode");
            assert_eq!(hex::encode(&out), want.replace(' ', ""), "{frame:?}");
        }
    }

    #[test]
    fn header_blocks_share_one_context_per_direction() {
        let mut encoder = FrameEncoder::new();
        let h = headers(&[
            ("streamtype", "stdout"),
            ("port", "8080"),
            ("requestid", "42"),
        ]);
        let frame = |stream_id| Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: h.clone(),
        };
        let mut first = Vec::new();
        encoder.encode(&frame(1), &mut first).expect("encode");
        let mut second = Vec::new();
        encoder.encode(&frame(3), &mut second).expect("encode");
        // The second block refers back into the first.
        assert!(
            second.len() < first.len(),
            "{} vs {}",
            second.len(),
            first.len()
        );

        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::from(&first[..]);
        assert_eq!(decoder.decode(&mut buf).expect("first"), Some(frame(1)));
        let mut buf = BytesMut::from(&second[..]);
        assert_eq!(decoder.decode(&mut buf).expect("second"), Some(frame(3)));

        let alone = decode_one(&second);
        assert!(
            matches!(alone, Err(FrameError::Compression(_))),
            "{alone:?}"
        );
    }

    #[test]
    fn truncated_input_needs_more_bytes() {
        let frames = every_frame();
        let wire = encode_all(&mut FrameEncoder::new(), &frames);
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        // Feed a few bytes at a time; a partial frame must consume nothing.
        for chunk in wire.chunks(7) {
            buf.extend_from_slice(chunk);
            loop {
                let before = buf.len();
                match decoder.decode(&mut buf).expect("decode") {
                    Some(frame) => decoded.push(frame),
                    None => {
                        assert_eq!(buf.len(), before, "a partial frame was consumed");
                        break;
                    }
                }
            }
        }
        assert_eq!(decoded, frames);
        for len in 0..8 {
            let partial = decode_one(&wire[..len]).expect("partial header");
            assert_eq!(partial, None);
        }
    }

    #[test]
    fn refuses_oversized_frames_from_the_header_alone() {
        let mut decoder = FrameDecoder::with_max_frame_len(1024);
        let mut data_header = BytesMut::from(&bytes("0000000100000801")[..]);
        let err = decoder
            .decode(&mut data_header)
            .expect_err("oversized DATA");
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    len: 2049,
                    max: 1024
                }
            ),
            "{err:?}"
        );

        let mut decoder = FrameDecoder::with_max_frame_len(1024);
        let mut syn_header = BytesMut::from(&bytes("8003000100ffffff")[..]);
        let err = decoder
            .decode(&mut syn_header)
            .expect_err("oversized SYN_STREAM");
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    len: 0xff_ffff,
                    max: 1024
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.stream_error(), None);

        // Control frames have their own, smaller limit.
        let mut syn_header = BytesMut::from(&bytes("8003000100100000")[..]);
        let err = FrameDecoder::new()
            .decode(&mut syn_header)
            .expect_err("1 MiB SYN_STREAM");
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    len: 0x10_0000,
                    max: MAX_CONTROL_FRAME_LEN
                }
            ),
            "{err:?}"
        );

        // Exactly at the limit is fine.
        let mut decoder = FrameDecoder::with_max_frame_len(4);
        let mut buf = BytesMut::from(&bytes("000000010000000461626364")[..]);
        let frame = decoder.decode(&mut buf).expect("at the limit");
        assert_eq!(
            frame,
            Some(Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"abcd")
            })
        );
    }

    #[test]
    fn refuses_other_versions() {
        // A SPDY/2 PING.
        let err = decode_one(&bytes("800200060000000400000001")).expect_err("v2");
        assert!(matches!(err, FrameError::UnsupportedVersion(2)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "control frame of SPDY version 2; only version 3 is spoken"
        );
    }

    #[test]
    fn skips_unknown_control_frames() {
        // CREDENTIAL (type 11) and the old NOOP (type 5), then a PING.
        let wire =
            bytes("8003000b00000006 0001 00000000 8003000500000000 8003000600000004 00000003");
        let mut buf = BytesMut::from(&wire[..]);
        let frame = FrameDecoder::new().decode(&mut buf).expect("decode");
        assert_eq!(frame, Some(Frame::Ping { id: 3 }));
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_fixed_frames_of_the_wrong_length() {
        let cases = [
            ("8003000300000004 00000001", "RST_STREAM", 4),
            ("8003000600000008 0000000100000000", "PING", 8),
            // GOAWAY as SPDY/2 laid it out, without the status.
            ("8003000700000004 00000001", "GOAWAY", 4),
            ("8003000900000004 00000001", "WINDOW_UPDATE", 4),
            // SETTINGS announcing two entries but carrying one.
            ("800300040000000c 00000002 0000000700010000", "SETTINGS", 12),
            ("8003000100000004 00000001", "SYN_STREAM", 4),
            ("8003000200000002 0000", "SYN_REPLY", 2),
        ];
        for (hex_bytes, name, len) in cases {
            let err = decode_one(&bytes(hex_bytes)).expect_err(name);
            match err {
                FrameError::BadLength { frame, len: got } => {
                    assert_eq!((frame, got), (name, len));
                }
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_stream_zero_and_status_zero() {
        let err = decode_one(&bytes("0000000000000001 61")).expect_err("DATA on 0");
        assert!(matches!(err, FrameError::ZeroStreamId("DATA")), "{err:?}");
        let err = decode_one(&bytes("8003000300000008 0000000000000001")).expect_err("RST on 0");
        assert!(
            matches!(err, FrameError::ZeroStreamId("RST_STREAM")),
            "{err:?}"
        );
        let err = decode_one(&bytes("8003000300000008 0000000300000000")).expect_err("status 0");
        assert!(matches!(err, FrameError::ZeroRstStatus(3)), "{err:?}");
    }

    #[test]
    fn compressed_data_is_a_stream_error() {
        let err = decode_one(&bytes("0000000502000001 61")).expect_err("compressed");
        assert!(matches!(err, FrameError::CompressedData(5)), "{err:?}");
        assert_eq!(err.stream_error(), Some((5, RstStatus::PROTOCOL_ERROR)));
    }

    /// A SYN_STREAM for `stream_id` whose header block is `raw`, compressed
    /// in `encoder`'s context.
    fn syn_stream_with_block(
        encoder: &mut FrameEncoder,
        stream_id: StreamId,
        raw: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let start = control_header(&mut out, SYN_STREAM, 0);
        out.put_u32(stream_id);
        out.put_u32(0);
        out.put_u16(0);
        encoder.deflate_block(raw, &mut out).expect("deflate");
        patch_len(&mut out, start);
        out
    }

    fn raw_block(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.put_u32(pairs.len() as u32);
        for (name, value) in pairs {
            raw.put_u32(name.len() as u32);
            raw.put_slice(name);
            raw.put_u32(value.len() as u32);
            raw.put_slice(value);
        }
        raw
    }

    #[test]
    fn invalid_header_blocks_are_stream_errors_that_keep_the_context() {
        let mut truncated = raw_block(&[(b"port", b"80")]);
        truncated.truncate(truncated.len() - 1);
        let mut trailing = raw_block(&[(b"port", b"80")]);
        trailing.extend_from_slice(b"xy");
        let cases: Vec<(Vec<u8>, HeaderError)> = vec![
            (
                raw_block(&[(b"Port", b"80")]),
                HeaderError::NotLowercase("Port".into()),
            ),
            (raw_block(&[(b"", b"80")]), HeaderError::EmptyName),
            (
                raw_block(&[(b"port", b"80"), (b"port", b"81")]),
                HeaderError::DuplicateName("port".into()),
            ),
            (
                raw_block(&[(b"port", b"80\0\081")]),
                HeaderError::EmptyValue("port".into()),
            ),
            (
                raw_block(&[(b"port", b"\080")]),
                HeaderError::EmptyValue("port".into()),
            ),
            (
                raw_block(&[(b"po\0rt", b"80")]),
                HeaderError::NulInName("po\0rt".into()),
            ),
            (raw_block(&[(b"port", b"\xff")]), HeaderError::NotUtf8),
            (truncated, HeaderError::Truncated("value")),
            (trailing, HeaderError::TrailingBytes(2)),
            (vec![0, 0], HeaderError::Truncated("pair count")),
        ];
        let mut encoder = FrameEncoder::new();
        let mut decoder = FrameDecoder::new();
        let mut stream_id = 1;
        for (raw, reason) in cases {
            let bytes = syn_stream_with_block(&mut encoder, stream_id, &raw);
            let err = decoder
                .decode(&mut BytesMut::from(&bytes[..]))
                .expect_err("invalid block");
            assert_eq!(
                err.stream_error(),
                Some((stream_id, RstStatus::PROTOCOL_ERROR)),
                "{err}"
            );
            match err {
                FrameError::InvalidHeaderBlock {
                    stream_id: id,
                    reason: got,
                } => {
                    assert_eq!((id, got), (stream_id, reason));
                }
                other => panic!("unexpected {other:?}"),
            }
            // The compression context is still in step.
            let good =
                syn_stream_with_block(&mut encoder, stream_id + 2, &raw_block(&[(b"port", b"80")]));
            let frame = decoder
                .decode(&mut BytesMut::from(&good[..]))
                .expect("valid block");
            assert!(
                matches!(&frame, Some(Frame::SynStream { headers, .. }) if headers.get("port") == Some("80")),
                "{frame:?}"
            );
            stream_id += 4;
        }
    }

    #[test]
    fn multiple_values_travel_nul_separated() {
        let frame = Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: headers(&[("x", "a"), ("y", ""), ("x", "b")]),
        };
        let mut out = Vec::new();
        FrameEncoder::new()
            .encode(&frame, &mut out)
            .expect("encode");
        // Inflate the block independently of the decoder.
        let mut inflate = Decompress::new(true);
        let mut block = Vec::with_capacity(1024);
        let err = inflate
            .decompress_vec(&out[12..], &mut block, FlushDecompress::Sync)
            .expect_err("needs dictionary");
        assert_eq!(err.needs_dictionary(), Some(DICTIONARY_ID));
        inflate.set_dictionary(DICTIONARY).expect("dictionary");
        let consumed = inflate.total_in() as usize;
        inflate
            .decompress_vec(&out[12 + consumed..], &mut block, FlushDecompress::Sync)
            .expect("inflate");
        assert_eq!(block, raw_block(&[(b"x", b"a\0b"), (b"y", b"")]));

        let Some(Frame::SynReply {
            headers: decoded, ..
        }) = decode_one(&out).expect("decode")
        else {
            panic!("not a SYN_REPLY");
        };
        assert_eq!(decoded.get_all("X").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(decoded.get("y"), Some(""));
        assert_eq!(
            decoded.iter().collect::<Vec<_>>(),
            [("x", "a"), ("x", "b"), ("y", "")]
        );
    }

    #[test]
    fn headers_refuse_what_the_wire_cannot_carry() {
        let mut h = Headers::new();
        h.append("StreamType", "stdout").expect("append");
        assert_eq!(h.get("streamtype"), Some("stdout"));
        assert_eq!(h.get("STREAMTYPE"), Some("stdout"));
        assert_eq!(h.iter().next(), Some(("streamtype", "stdout")));
        assert_eq!(h.append("", "x"), Err(HeaderError::EmptyName));
        assert_eq!(
            h.append("a\0b", "x"),
            Err(HeaderError::NulInName("a\0b".into()))
        );
        assert_eq!(
            h.append("port", "1\x002"),
            Err(HeaderError::NulInValue("port".into()))
        );
        assert_eq!(
            h.append("streamtype", ""),
            Err(HeaderError::EmptyValue("streamtype".into()))
        );
        h.append("empty", "").expect("a lone empty value");
        assert_eq!(
            h.append("empty", "x"),
            Err(HeaderError::EmptyValue("empty".into()))
        );
        assert_eq!(h.len(), 2);
        assert_eq!(h.get("missing"), None);
    }

    #[test]
    fn refuses_header_blocks_that_inflate_too_far() {
        let big = vec![b'a'; MAX_HEADER_BLOCK_LEN + 1];
        let mut encoder = FrameEncoder::new();
        let bytes = syn_stream_with_block(&mut encoder, 1, &raw_block(&[(b"big", &big)]));
        assert!(bytes.len() < 4096, "a {}-byte bomb", bytes.len());
        let err = decode_one(&bytes).expect_err("bomb");
        assert!(matches!(err, FrameError::HeaderBlockTooLarge), "{err:?}");
        assert_eq!(err.stream_error(), None);

        // Nor are such blocks sent.
        let mut h = Headers::new();
        h.append("big", std::str::from_utf8(&big).expect("ascii"))
            .expect("append");
        let frame = Frame::Headers {
            stream_id: 1,
            fin: false,
            headers: h,
        };
        let mut out = vec![1, 2, 3];
        assert!(matches!(
            encoder.encode(&frame, &mut out),
            Err(FrameError::Unencodable(_))
        ));
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn refuses_to_encode_what_does_not_fit() {
        let cases = [
            Frame::Ping { id: 1 }, // control: must succeed
            Frame::RstStream {
                stream_id: 1 << 31,
                status: RstStatus::CANCEL,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 1 << 31,
            },
            Frame::Settings {
                clear_persisted: false,
                entries: vec![Setting {
                    id: 1 << 24,
                    flags: 0,
                    value: 0,
                }],
            },
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 8,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new(),
            },
            Frame::Data {
                stream_id: 1 << 31,
                fin: false,
                data: Bytes::new(),
            },
        ];
        let mut encoder = FrameEncoder::new();
        for (i, frame) in cases.iter().enumerate() {
            let mut out = Vec::new();
            let result = encoder.encode(frame, &mut out);
            if i == 0 {
                assert!(result.is_ok() && out.len() == 12, "{result:?}");
            } else {
                assert!(
                    matches!(result, Err(FrameError::Unencodable(_))),
                    "{frame:?}: {result:?}"
                );
                assert!(out.is_empty());
            }
        }
    }
}
