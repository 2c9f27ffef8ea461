//! The remote command (exec) stream protocol, as kubectl speaks it over
//! WebSocket (`v5.channel.k8s.io` / `v4.channel.k8s.io`): each message is
//! one channel byte and its data. Channels: 0 stdin, 1 stdout, 2 stderr,
//! 3 error (a `Status` at the end), 4 resize (`{"Width":W,"Height":H}`);
//! v5 adds 255 — `[255, channel]` closes that channel (stdin's end).
//!
//! Text frames carry messages as binary ones do (upstream's `wsstream`
//! reads either kind the same way): the Python client sends `str` stdin as
//! text. `v4.base64.channel.k8s.io`, for clients that can only send text
//! (browsers' consoles), writes the channel as a digit (`'0'` + channel)
//! and the data in base64, both ways, in text frames.
//!
//! Between server and agent (an HTTP/2 stream through the tunnel) the
//! same messages travel length-prefixed: a 4-byte big-endian length, then
//! the channel byte and the data.

use serde_json::Value;

use super::status::{self, Cause, Details};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// The subprotocols served, best first.
pub const PROTOCOLS: [&str; 3] = ["v5.channel.k8s.io", "v4.channel.k8s.io", BASE64_PROTOCOL];

/// The subprotocol whose messages are text: a channel digit, then base64.
pub const BASE64_PROTOCOL: &str = "v4.base64.channel.k8s.io";

/// A WebSocket message (binary or text) as (channel, data); `None` for an
/// empty message or, in base64, data that does not decode (upstream drops
/// such a message too).
pub fn decode_message(base64: bool, message: &[u8]) -> Option<(u8, Vec<u8>)> {
    let (&first, data) = message.split_first()?;
    if !base64 {
        return Some((first, data.to_vec()));
    }
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(data)
        .ok()?;
    Some((first.wrapping_sub(b'0'), data))
}

/// The text of a message for the base64 protocol.
pub fn encode_base64(channel: u8, data: &[u8]) -> String {
    use base64::Engine;
    let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
    text.push(char::from(b'0'.wrapping_add(channel)));
    base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
    text
}

/// HTTP/2 flow-control windows of the agent's tunnel (both ends): 64
/// streams whose bodies nobody reads (logs, exec or port-forward to a
/// stalled peer) before the tunnel as a whole waits.
pub const TUNNEL_STREAM_WINDOW: u32 = 256 * 1024;
pub const TUNNEL_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// One message, framed for the tunnel.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len() + 1).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(data.len() + 5);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(channel);
    out.extend_from_slice(data);
    out
}

/// Splits a byte stream back into (channel, data) messages.
#[derive(Default)]
pub struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if there is one.
    pub fn next_message(&mut self) -> Option<(u8, Vec<u8>)> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 {
            self.buf.drain(..4);
            return self.next_message();
        }
        if self.buf.len() < 4 + len {
            return None;
        }
        let msg: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        Some((msg[0], msg[1..].to_vec()))
    }
}

/// The `Status` that ends a session: success, or the exit code the way
/// kubectl turns it into "command terminated with exit code N". The bytes
/// are the kubelet's (Go field order, see [`status::stream_status`]).
pub fn exit_status(code: i32) -> Vec<u8> {
    if code == 0 {
        return status::stream_status(None);
    }
    let details = Details {
        causes: vec![Cause {
            reason: "ExitCode".into(),
            message: code.to_string(),
            field: String::new(),
        }],
        ..Details::default()
    };
    let message = format!(
        "command terminated with non-zero exit code: error executing command [..], exit code {code}"
    );
    status::stream_status(Some((&message, "NonZeroExitCode", &details, 0)))
}

/// A `Status` for a failure inside the session, as upstream's
/// `NewInternalError`: "Internal error occurred: …", code 500, the cause in
/// the details.
pub fn failure(message: &str) -> Vec<u8> {
    let details = Details {
        causes: vec![Cause {
            reason: String::new(),
            message: message.to_owned(),
            field: String::new(),
        }],
        ..Details::default()
    };
    let text = format!("Internal error occurred: {message}");
    status::stream_status(Some((&text, "InternalError", &details, 500)))
}

/// A terminal size message.
pub fn parse_resize(data: &[u8]) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_slice(data).ok()?;
    Some((
        u16::try_from(v["Width"].as_u64()?).ok()?,
        u16::try_from(v["Height"].as_u64()?).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_back_whatever_the_chunking() {
        let mut wire = frame(STDOUT, b"hello");
        wire.extend(frame(ERROR, br#"{"status":"Success"}"#));
        wire.extend(frame(STDIN, b""));
        for cut in 0..wire.len() {
            let mut d = Deframer::default();
            let mut got = Vec::new();
            d.push(&wire[..cut]);
            while let Some(m) = d.next_message() {
                got.push(m);
            }
            d.push(&wire[cut..]);
            while let Some(m) = d.next_message() {
                got.push(m);
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0], (STDOUT, b"hello".to_vec()));
            assert_eq!(got[2], (STDIN, Vec::new()));
        }
    }

    #[test]
    fn text_and_base64_messages_decode_to_channel_and_data() {
        // v4/v5: the same bytes whether the frame was text or binary.
        assert_eq!(
            decode_message(false, b"\0hello\n"),
            Some((STDIN, b"hello\n".to_vec()))
        );
        assert_eq!(decode_message(false, b""), None);
        // base64: a channel digit, then the data in base64.
        assert_eq!(
            decode_message(true, b"0aGVsbG8K"),
            Some((STDIN, b"hello\n".to_vec()))
        );
        assert_eq!(decode_message(true, b"0not base64!"), None);
        assert_eq!(encode_base64(STDOUT, b"hello\n"), "1aGVsbG8K");
        let round = encode_base64(STDERR, &[0, 255, 7]);
        assert_eq!(
            decode_message(true, round.as_bytes()),
            Some((STDERR, vec![0, 255, 7]))
        );
    }

    #[test]
    fn exit_codes_read_as_kubectl_expects() {
        // The kubelet's bytes: Go's field order, empty fields left out.
        assert_eq!(exit_status(0), br#"{"metadata":{},"status":"Success"}"#);
        assert_eq!(
            String::from_utf8(exit_status(3)).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [..], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            String::from_utf8(failure("boom")).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}"#
        );
        assert_eq!(parse_resize(br#"{"Width":80,"Height":24}"#), Some((80, 24)));
        assert_eq!(parse_resize(b"junk"), None);
    }
}
