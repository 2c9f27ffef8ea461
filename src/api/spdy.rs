//! SPDY/3.1 framing, the part `kubectl port-forward` speaks: it opens
//! streams (SYN_STREAM with compressed headers), sends DATA, half-closes
//! with FIN, resets streams, pings and says GOAWAY. The server answers
//! each stream with a SYN_REPLY and sends DATA back. Flow control
//! (WINDOW_UPDATE) is not used by kubectl's SPDY library, so it is read
//! and ignored. Frame layout: draft-mbelshe-httpbis-spdy-00 §2.2.
//!
//! Header blocks are one zlib stream per direction, primed with the SPDY
//! dictionary. flate2's Rust backend cannot set a dictionary, so the
//! inflater is given one first as a stored deflate block: back-references
//! into the dictionary then resolve against that block's output. Our own
//! header blocks are compressed without a dictionary, which zlib readers
//! accept (the stream's header says no dictionary is used).

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const CONTROL: u8 = 0x80;
const VERSION: u8 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
/// FIN on DATA, SYN_STREAM and SYN_REPLY: the sender is done with the stream.
pub const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: the stream is not (or no longer) known.
pub const INVALID_STREAM: u32 = 2;
/// RST_STREAM status: the stream's request was refused.
pub const REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: the stream was cancelled.
pub const CANCEL: u32 = 5;
/// Longest frame accepted (kubectl's DATA frames are at most 32 KiB, its
/// control frames far smaller; a bigger one is a broken peer, not
/// something to buffer).
const MAX_FRAME: usize = 1 << 20;
/// Largest header block accepted after decompression.
const MAX_HEADERS: usize = 64 * 1024;

/// Header names of the SPDY/3 dictionary, in order, each preceded there by
/// its length as a 32-bit big-endian number.
const DICTIONARY_NAMES: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's text after the names, as it is.
const DICTIONARY_TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// Its Adler-32, which a zlib stream that uses it names in its header.
const DICTIONARY_ID: u32 = 0xe3c6_a7c2;

fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1423);
    for name in DICTIONARY_NAMES {
        d.extend_from_slice(&u32::try_from(name.len()).unwrap_or(0).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
    }
    d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    d
}

/// A frame from the peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A new stream, with its (lower-case) headers.
    SynStream {
        stream: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    Reset {
        stream: u32,
    },
    Ping(u32),
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY, NOOP: nothing to do.
    Ignored,
}

/// Reads frames out of the bytes received so far.
pub struct Reader {
    buf: BytesMut,
    inflate: Decompress,
    /// Whether the first header block (with the zlib header) was read.
    started: bool,
}

impl Default for Reader {
    fn default() -> Self {
        Self::new()
    }
}

impl Reader {
    #[must_use]
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            inflate: Decompress::new(false),
            started: false,
        }
    }

    /// Add received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived.
    ///
    /// # Errors
    /// The peer broke the protocol (the connection should be closed).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = usize::from(self.buf[5]) << 16
            | usize::from(self.buf[6]) << 8
            | usize::from(self.buf[7]);
        if len > MAX_FRAME {
            return Err(format!("a SPDY frame of {len} bytes is too big"));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        let head = self.buf.split_to(8);
        let payload = self.buf.split_to(len).freeze();
        let flags = head[4];
        if head[0] & CONTROL == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            return Ok(Some(Frame::Data {
                stream,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let version = u16::from_be_bytes([head[0] & !CONTROL, head[1]]);
        if version != u16::from(VERSION) {
            return Err(format!("SPDY version {version} is not spoken here (3 is)"));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let word = |at: usize| -> Result<u32, String> {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
                .ok_or_else(|| format!("a SPDY control frame of type {kind} is too short"))
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                let stream = word(0)?;
                let block = payload.get(10..).ok_or("a SYN_STREAM frame is too short")?;
                let headers = self.headers(block)?;
                Frame::SynStream {
                    stream,
                    fin: flags & FLAG_FIN != 0,
                    headers,
                }
            }
            SYN_REPLY => {
                // Keeps the shared zlib stream in step, though unused.
                let block = payload.get(4..).ok_or("a SYN_REPLY frame is too short")?;
                self.headers(block)?;
                Frame::Ignored
            }
            RST_STREAM => Frame::Reset { stream: word(0)? },
            PING => Frame::Ping(u32::from_be_bytes(
                payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or("a PING frame is too short")?,
            )),
            GOAWAY => Frame::GoAway,
            8 => {
                // HEADERS: stream id, then a header block on the same stream.
                let block = payload.get(4..).ok_or("a HEADERS frame is too short")?;
                self.headers(block)?;
                Frame::Ignored
            }
            _ => Frame::Ignored,
        }))
    }

    /// Decompress and parse one header block.
    fn headers(&mut self, mut block: &[u8]) -> Result<Vec<(String, String)>, String> {
        if !self.started {
            // The zlib header: CMF, FLG and, with FDICT, the dictionary id.
            let [cmf, flg, ..] = *block else {
                return Err("a SPDY header block is too short".into());
            };
            if cmf & 0x0f != 8 || (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
                return Err("a SPDY header block is not a zlib stream".into());
            }
            block = &block[2..];
            if flg & 0x20 != 0 {
                let id = block
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or("a SPDY header block is too short")?;
                if id != DICTIONARY_ID {
                    return Err(format!(
                        "SPDY headers use dictionary {id:#010x}, not SPDY/3's"
                    ));
                }
                block = &block[4..];
            }
            self.prime()?;
            self.started = true;
        }
        let mut out = Vec::with_capacity(1024);
        let mut input = block;
        loop {
            let (before, produced) = (self.inflate.total_in(), out.len());
            out.reserve(1024);
            let status = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|e| format!("SPDY header block: {e}"))?;
            let used = usize::try_from(self.inflate.total_in() - before).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            if out.len() > MAX_HEADERS {
                return Err("a SPDY header block is too big".into());
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            // The headers' zlib stream lasts as long as the session; one
            // that ends, or input the inflater takes nothing from, is
            // broken (and would otherwise be retried forever).
            if status == Status::StreamEnd || (used == 0 && out.len() == produced) {
                return Err(
                    "a SPDY header block is not a valid continuation of the headers' zlib stream"
                        .into(),
                );
            }
        }
        parse_headers(&out)
    }

    /// Run the dictionary through the inflater as a stored block.
    fn prime(&mut self) -> Result<(), String> {
        let dict = dictionary();
        let len = u16::try_from(dict.len()).unwrap_or(u16::MAX);
        let mut block = vec![0u8];
        block.extend_from_slice(&len.to_le_bytes());
        block.extend_from_slice(&(!len).to_le_bytes());
        block.extend_from_slice(&dict);
        let mut out = Vec::with_capacity(dict.len() + 16);
        match self
            .inflate
            .decompress_vec(&block, &mut out, FlushDecompress::Sync)
        {
            Ok(Status::Ok | Status::BufError) if out == dict => Ok(()),
            other => Err(format!("priming the SPDY dictionary: {other:?}")),
        }
    }
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let short = || "a SPDY header block is cut short".to_owned();
    let word = |b: &mut &[u8]| -> Result<usize, String> {
        if b.remaining() < 4 {
            return Err(short());
        }
        Ok(b.get_u32() as usize)
    };
    let count = word(&mut b)?;
    let mut headers = Vec::new();
    for _ in 0..count {
        let mut pair = [String::new(), String::new()];
        for part in &mut pair {
            let n = word(&mut b)?;
            if b.len() < n {
                return Err(short());
            }
            *part = String::from_utf8_lossy(&b[..n]).into_owned();
            b = &b[n..];
        }
        let [name, value] = pair;
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

/// Writes frames (owns the outgoing header compression).
pub struct Writer {
    deflate: Compress,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&[CONTROL, VERSION]);
    f.extend_from_slice(&kind.to_be_bytes());
    f.extend_from_slice(&[flags, len[1], len[2], len[3]]);
    f.extend_from_slice(payload);
    f
}

impl Writer {
    #[must_use]
    pub fn new() -> Self {
        Self {
            deflate: Compress::new(Compression::fast(), true),
        }
    }

    /// SYN_REPLY with no headers: the stream is accepted.
    pub fn syn_reply(&mut self, stream: u32) -> Vec<u8> {
        let mut payload = stream.to_be_bytes().to_vec();
        // An empty header block: zero pairs.
        let mut input: &[u8] = &[0, 0, 0, 0];
        loop {
            payload.reserve(64);
            let before = self.deflate.total_in();
            if self
                .deflate
                .compress_vec(input, &mut payload, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            let used = usize::try_from(self.deflate.total_in() - before).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            if input.is_empty() && payload.len() < payload.capacity() {
                break;
            }
        }
        control(SYN_REPLY, 0, &payload)
    }
}

/// A DATA frame (`data` at most 16 MiB − 1).
#[must_use]
pub fn data(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).unwrap_or(0).to_be_bytes();
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(&[if fin { FLAG_FIN } else { 0 }, len[1], len[2], len[3]]);
    f.extend_from_slice(data);
    f
}

/// A PING answer (the same id).
#[must_use]
pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

/// RST_STREAM with `status`.
#[must_use]
pub fn reset(stream: u32, status: u32) -> Vec<u8> {
    let mut p = stream.to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &p)
}

/// GOAWAY: no more streams (status OK).
#[must_use]
pub fn goaway(last_stream: u32) -> Vec<u8> {
    let mut p = last_stream.to_be_bytes().to_vec();
    p.extend_from_slice(&0u32.to_be_bytes());
    control(GOAWAY, 0, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy_3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // Adler-32 (RFC 1950 §8.2).
        let (mut a, mut b) = (1u32, 0u32);
        for byte in &d {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(b << 16 | a, DICTIONARY_ID);
    }

    /// A peer that compresses its header blocks with the dictionary, as
    /// kubectl does: one zlib stream over all of them, whose header names
    /// the dictionary and whose data refers back into it. (Made here by
    /// compressing the dictionary first and leaving its output out, which
    /// is what a preset dictionary amounts to.)
    struct Peer {
        deflate: Compress,
        started: bool,
    }

    impl Peer {
        fn new() -> Self {
            let mut deflate = Compress::new(Compression::best(), false);
            let mut skipped = Vec::with_capacity(4096);
            deflate
                .compress_vec(&dictionary(), &mut skipped, FlushCompress::Sync)
                .unwrap();
            Self {
                deflate,
                started: false,
            }
        }

        fn syn_stream(&mut self, stream: u32, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut block = Vec::new();
            block.extend_from_slice(&u32::try_from(headers.len()).unwrap().to_be_bytes());
            for (n, v) in headers {
                for s in [n, v] {
                    block.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
                    block.extend_from_slice(s.as_bytes());
                }
            }
            let mut payload = stream.to_be_bytes().to_vec();
            payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            if !self.started {
                payload.extend_from_slice(&[0x78, 0xbb]);
                payload.extend_from_slice(&DICTIONARY_ID.to_be_bytes());
                self.started = true;
            }
            let mut compressed = Vec::with_capacity(4096);
            self.deflate
                .compress_vec(&block, &mut compressed, FlushCompress::Sync)
                .unwrap();
            payload.extend_from_slice(&compressed);
            control(SYN_STREAM, 0, &payload)
        }
    }

    #[test]
    fn streams_data_and_control_frames_are_read() {
        let mut r = Reader::new();
        let mut peer = Peer::new();
        let mut wire = peer.syn_stream(
            1,
            &[("streamType", "error"), ("port", "80"), ("requestid", "0")],
        );
        wire.extend(peer.syn_stream(
            3,
            &[("streamtype", "data"), ("port", "80"), ("requestid", "0")],
        ));
        wire.extend(data(3, true, b"GET / HTTP/1.0\r\n\r\n"));
        wire.extend(ping(7));
        wire.extend(reset(1, CANCEL));
        // Bytes arrive in pieces.
        let mut frames = Vec::new();
        for piece in wire.chunks(5) {
            r.push(piece);
            while let Some(f) = r.next_frame().unwrap() {
                frames.push(f);
            }
        }
        let h = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    stream: 1,
                    fin: false,
                    headers: h(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")])
                },
                Frame::SynStream {
                    stream: 3,
                    fin: false,
                    headers: h(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")])
                },
                Frame::Data {
                    stream: 3,
                    fin: true,
                    data: Bytes::from_static(b"GET / HTTP/1.0\r\n\r\n")
                },
                Frame::Ping(7),
                Frame::Reset { stream: 1 },
            ]
        );
    }

    #[test]
    fn another_dictionary_or_a_huge_frame_is_refused() {
        let mut wire = Peer::new().syn_stream(1, &[("port", "80")]);
        // The dictionary id is at 8 (frame) + 10 + 2.
        wire[20] ^= 0xff;
        let mut r = Reader::new();
        r.push(&wire);
        assert!(r.next_frame().unwrap_err().contains("dictionary"));
        let mut r = Reader::new();
        r.push(&[0, 0, 0, 1, 0, 0x10, 0, 1]);
        assert!(r.next_frame().unwrap_err().contains("too big"));
    }

    #[test]
    fn a_header_stream_that_ends_is_an_error_not_a_busy_loop() {
        let mut peer = Peer::new();
        let mut r = Reader::new();
        r.push(&peer.syn_stream(1, &[("port", "80")]));
        assert!(matches!(r.next_frame(), Ok(Some(Frame::SynStream { .. }))));
        // A final (BFINAL) empty stored block, then bytes after the end.
        let mut payload = 3u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 1, 2, 3, 4]);
        r.push(&control(SYN_STREAM, 0, &payload));
        assert!(
            r.next_frame()
                .unwrap_err()
                .contains("not a valid continuation")
        );
    }

    #[test]
    fn a_syn_reply_carries_an_empty_zlib_header_block() {
        let mut w = Writer::new();
        let first = w.syn_reply(1);
        let second = w.syn_reply(3);
        assert_eq!(&first[..4], &[0x80, 3, 0, 2]);
        // One zlib stream over both blocks: each inflates to zero pairs.
        let mut z = Decompress::new(true);
        for f in [&first, &second] {
            let mut out = Vec::with_capacity(64);
            z.decompress_vec(&f[12..], &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, [0, 0, 0, 0]);
        }
    }
}
