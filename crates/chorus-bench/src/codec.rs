//! What goes over the wire and how it is read back, kept cheap: the process clock,
//! message bodies that carry their send time and key, `send` frames written by hand
//! and incoming frames parsed into borrowed views of only the fields the bench reads.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since a process-local base instant (monotonic; the base is set by the
/// first call).
pub(crate) fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Which part of the run a send belongs to, by its (intended) send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before the measured window.
    Warmup,
    /// In the measured window.
    Measured,
    /// After it.
    After,
}

impl Phase {
    /// The letter in a `client_msg_id`.
    pub(crate) fn letter(self) -> char {
        match self {
            Self::Warmup => 'w',
            Self::Measured => 'm',
            Self::After => 'a',
        }
    }

    fn from_letter(c: u8) -> Option<Self> {
        match c {
            b'w' => Some(Self::Warmup),
            b'm' => Some(Self::Measured),
            b'a' => Some(Self::After),
            _ => None,
        }
    }
}

/// What identifies one benchmark message: the run, the sender's index and its own
/// counter (`k`), and the send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BodyKey {
    /// This process's run id (messages of other runs are ignored).
    pub run: u32,
    /// Send time, [`now_ns`] of the sender.
    pub ts_ns: u64,
    /// Index of the sending user.
    pub sender: u32,
    /// The sender's message counter.
    pub k: u64,
}

/// Appends a body of at least `len` bytes carrying `key`: `RUN TS SENDER K ` and then
/// `x` padding. Only ASCII that needs no JSON escaping.
pub(crate) fn encode_body(out: &mut String, key: &BodyKey, len: usize) {
    let start = out.len();
    let _ = write!(
        out,
        "{:08x} {} {} {} ",
        key.run, key.ts_ns, key.sender, key.k
    );
    let written = out.len() - start;
    out.extend(std::iter::repeat_n('x', len.saturating_sub(written)));
}

/// Reads the key back from a body written by [`encode_body`].
pub(crate) fn decode_body(body: &str) -> Option<BodyKey> {
    let mut parts = body.splitn(5, ' ');
    let run = u32::from_str_radix(parts.next()?, 16).ok()?;
    let ts_ns = parts.next()?.parse().ok()?;
    let sender = parts.next()?.parse().ok()?;
    let k = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(BodyKey {
        run,
        ts_ns,
        sender,
        k,
    })
}

/// Appends a `client_msg_id`: `RUN-PHASE SENDER-K`, unique per user across runs.
pub(crate) fn encode_client_msg_id(out: &mut String, run: u32, phase: Phase, sender: u32, k: u64) {
    let _ = write!(out, "{run:08x}-{}{sender}-{k}", phase.letter());
}

/// The run, phase, sender and counter of a `client_msg_id` written by
/// [`encode_client_msg_id`].
pub(crate) fn decode_client_msg_id(id: &str) -> Option<(u32, Phase, u32, u64)> {
    let (run, rest) = id.split_once('-')?;
    if run.len() != 8 {
        return None;
    }
    let run = u32::from_str_radix(run, 16).ok()?;
    let phase = Phase::from_letter(*rest.as_bytes().first()?)?;
    let (sender, k) = rest[1..].split_once('-')?;
    Some((run, phase, sender.parse().ok()?, k.parse().ok()?))
}

/// Writes a whole `send` frame into `out` (cleared first).
pub(crate) fn encode_send(
    out: &mut String,
    conversation_id: &str,
    key: &BodyKey,
    phase: Phase,
    body_len: usize,
) {
    out.clear();
    out.push_str(r#"{"type":"send","client_msg_id":""#);
    encode_client_msg_id(out, key.run, phase, key.sender, key.k);
    out.push_str(r#"","conversation_id":""#);
    out.push_str(conversation_id);
    out.push_str(r#"","body":""#);
    encode_body(out, key, body_len);
    out.push_str(r#""}"#);
}

/// A `sync` frame naming `conversation_id` with the last `seq` held, or naming none.
pub(crate) fn encode_sync(conversation_id: &str, since: Option<i64>) -> String {
    match since {
        Some(seq) => format!(r#"{{"type":"sync","since":{{"{conversation_id}":{seq}}}}}"#),
        None => r#"{"type":"sync","since":{}}"#.to_owned(),
    }
}

/// The fields of a server frame the bench reads, borrowed from the text. Everything
/// else is skipped.
#[derive(Debug, Deserialize)]
pub(crate) struct InFrame<'a> {
    /// The frame's `type`.
    #[serde(rename = "type", borrow)]
    pub ty: &'a str,
    /// `message` frames: the message object (parse with [`InFrame::message`]); `error`
    /// frames: the human text.
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    /// `accepted` and send `error` frames.
    #[serde(borrow, default)]
    pub client_msg_id: Option<&'a str>,
    /// `error` frames.
    #[serde(borrow, default)]
    pub code: Option<&'a str>,
    /// `error` frames with `rate_limited`.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// The fields of a delivered message the bench reads.
#[derive(Debug, Deserialize)]
pub(crate) struct InMessage<'a> {
    /// Where it was sent.
    #[serde(borrow)]
    pub conversation_id: &'a str,
    /// Its position in the conversation.
    pub seq: i64,
    /// The text (borrowed unless it holds escapes).
    #[serde(borrow)]
    pub body: std::borrow::Cow<'a, str>,
}

impl<'a> InFrame<'a> {
    /// Parses a server frame.
    pub(crate) fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The message of a `message` frame.
    pub(crate) fn message(&self) -> Option<InMessage<'a>> {
        if self.ty != "message" {
            return None;
        }
        serde_json::from_str(self.message?.get()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BodyKey {
        BodyKey {
            run: 0xdead_beef,
            ts_ns: 123_456_789_012,
            sender: 17,
            k: 42,
        }
    }

    #[test]
    fn bodies_round_trip_and_have_the_requested_size() {
        for len in [1, 10, 40, 100, 1000] {
            let mut s = String::new();
            encode_body(&mut s, &key(), len);
            assert!(s.len() >= len);
            if len >= 40 {
                assert_eq!(s.len(), len);
            }
            assert_eq!(decode_body(&s), Some(key()));
        }
        assert_eq!(decode_body("hello world"), None);
        assert_eq!(decode_body("deadbeef 1 2"), None);
        assert_eq!(decode_body(""), None);
    }

    #[test]
    fn client_msg_ids_round_trip() {
        let mut s = String::new();
        encode_client_msg_id(&mut s, 0xab, Phase::Measured, 3, 99);
        assert_eq!(s, "000000ab-m3-99");
        assert_eq!(
            decode_client_msg_id(&s),
            Some((0xab, Phase::Measured, 3, 99))
        );
        assert_eq!(decode_client_msg_id("c1"), None);
        assert_eq!(decode_client_msg_id("000000ab-z3-99"), None);
        assert_eq!(decode_client_msg_id("000000ab-m3"), None);
    }

    #[test]
    fn send_frames_are_valid_json_for_the_server() {
        let mut s = String::from("leftover");
        let conv = "0191f0a3-1e2f-7a84-b15d-6f8001c24d5e";
        encode_send(&mut s, conv, &key(), Phase::Warmup, 64);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["type"], "send");
        assert_eq!(v["conversation_id"], conv);
        assert_eq!(v["client_msg_id"], "deadbeef-w17-42");
        let body = v["body"].as_str().unwrap();
        assert_eq!(body.len(), 64);
        assert_eq!(decode_body(body), Some(key()));
    }

    #[test]
    fn sync_frames() {
        let v: serde_json::Value = serde_json::from_str(&encode_sync("c", Some(7))).unwrap();
        assert_eq!(v, serde_json::json!({"type": "sync", "since": {"c": 7}}));
        let v: serde_json::Value = serde_json::from_str(&encode_sync("c", None)).unwrap();
        assert_eq!(v, serde_json::json!({"type": "sync", "since": {}}));
    }

    #[test]
    fn parses_the_server_frames_it_needs() {
        let text = r#"{"type":"message","message":{"message_id":"bbc75636-f9b5-5db5-87d8-9c0f2671248e","client_msg_id":"a-1","conversation_id":"c1","seq":3,"sender_id":"u","body":"deadbeef 5 1 2 xx","sent_at":"2025-03-14T09:26:53.589Z","origin":"user"}}"#;
        let f = InFrame::parse(text).unwrap();
        assert_eq!(f.ty, "message");
        let m = f.message().unwrap();
        assert_eq!((m.conversation_id, m.seq), ("c1", 3));
        assert!(matches!(m.body, std::borrow::Cow::Borrowed(_)));
        assert_eq!(decode_body(&m.body).unwrap().k, 2);

        let f = InFrame::parse(
            r#"{"type":"message","message":{"conversation_id":"c","seq":1,"body":"say \"hi\""}}"#,
        )
        .unwrap();
        assert_eq!(f.message().unwrap().body, "say \"hi\"");

        let f = InFrame::parse(
            r#"{"type":"error","code":"rate_limited","message":"too many messages; retry in 10 ms","client_msg_id":"x","retry_after_ms":10}"#,
        )
        .unwrap();
        assert_eq!(f.ty, "error");
        assert_eq!(f.code, Some("rate_limited"));
        assert_eq!(f.client_msg_id, Some("x"));
        assert_eq!(f.retry_after_ms, Some(10));
        assert!(f.message().is_none());

        let f =
            InFrame::parse(r#"{"type":"accepted","client_msg_id":"k","message_id":"m"}"#).unwrap();
        assert_eq!((f.ty, f.client_msg_id), ("accepted", Some("k")));
        let f = InFrame::parse(r#"{"type":"synced","last_seq":{"a":1},"online":[]}"#).unwrap();
        assert_eq!(f.ty, "synced");
        assert!(InFrame::parse("not json").is_err());
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
