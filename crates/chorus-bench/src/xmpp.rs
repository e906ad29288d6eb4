//! XMPP over WebSocket (RFC 7395) as the bench needs it against ejabberd: the frames a
//! client writes (`<open/>`, SASL PLAIN, resource binding, presence, messages, a MUC
//! join) and a reader for the frames it gets back. Each WebSocket text frame holds one
//! complete element (RFC 7395 §3.3.3), so the reader looks at one element at a time:
//! its name, a few attributes and the text of its `<body/>`, without a general XML
//! parser.

use base64::Engine as _;
use std::borrow::Cow;
use std::fmt::Write as _;

/// The WebSocket subprotocol of RFC 7395.
pub(crate) const SUBPROTOCOL: &str = "xmpp";
/// The resource every bench session binds.
pub(crate) const RESOURCE: &str = "bench";
/// The `id` of the bind request.
const BIND_ID: &str = "bind";

/// `<open/>`: opens (or, after SASL, restarts) the stream to `domain`.
pub(crate) fn open(domain: &str) -> String {
    format!(
        r#"<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="{}" version="1.0"/>"#,
        escape(domain)
    )
}

/// SASL PLAIN with the authorization identity left empty (RFC 4616).
pub(crate) fn auth_plain(user: &str, password: &str) -> String {
    let mut raw = Vec::with_capacity(user.len() + password.len() + 2);
    raw.push(0);
    raw.extend_from_slice(user.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    format!(
        r#"<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">{}</auth>"#,
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Binds [`RESOURCE`].
pub(crate) fn bind() -> String {
    format!(
        r#"<iq xmlns="jabber:client" type="set" id="{BIND_ID}"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>{RESOURCE}</resource></bind></iq>"#
    )
}

/// Initial presence: makes the session available, so messages to the bare JID reach it.
pub(crate) const PRESENCE: &str = r#"<presence xmlns="jabber:client"/>"#;

/// Joins the MUC room `room` (a bare JID) as `nick`, asking for no history.
pub(crate) fn join_room(room: &str, nick: &str) -> String {
    format!(
        r#"<presence xmlns="jabber:client" to="{}/{}"><x xmlns="http://jabber.org/protocol/muc"><history maxstanzas="0"/></x></presence>"#,
        escape(room),
        escape(nick)
    )
}

/// Writes a whole `<message/>` into `out` (cleared first): `chat` to a user, or
/// `groupchat` to a room. `body` is written escaped; the bench's bodies need none.
pub(crate) fn encode_message(out: &mut String, to: &str, groupchat: bool, id: &str, body: &str) {
    out.clear();
    let kind = if groupchat { "groupchat" } else { "chat" };
    let _ = write!(
        out,
        r#"<message xmlns="jabber:client" to="{}" type="{kind}" id="{}"><body>"#,
        escape(to),
        escape(id)
    );
    out.push_str(&escape(body));
    out.push_str("</body></message>");
}

/// Escapes the five XML special characters (borrowed when there are none).
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['<', '>', '&', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Undoes [`escape`] and numeric character references (borrowed when there are none);
/// `None` on a malformed reference.
pub(crate) fn unescape(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('&') {
        return Some(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find(';')? + at;
        let entity = &rest[at + 1..end];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = match entity.strip_prefix("#x") {
                    Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                    None => entity.strip_prefix('#')?.parse().ok()?,
                };
                char::from_u32(code)?
            }
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

/// The start tag of an element: its name (prefix included) and raw attribute text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StartTag<'a> {
    name: &'a str,
    attrs: &'a str,
}

/// The first start tag in `xml` at or after `from`, skipping an XML declaration,
/// comments and end tags; its tag and the offset just past it.
fn start_tag(xml: &str, from: usize) -> Option<(StartTag<'_>, usize)> {
    let mut at = from;
    loop {
        let open = xml[at..].find('<')? + at;
        let after = &xml[open + 1..];
        if after.starts_with(['?', '!', '/']) {
            at = open + 1 + after.find('>')? + 1;
            continue;
        }
        let close = after.find('>')?;
        let inner = after[..close].trim_end_matches('/');
        let name_end = inner
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(inner.len());
        let tag = StartTag {
            name: &inner[..name_end],
            attrs: &inner[name_end..],
        };
        return Some((tag, open + 1 + close + 1));
    }
}

/// The value of attribute `name` in raw attribute text, unescaped.
fn attr<'a>(attrs: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let mut rest = attrs;
    loop {
        rest = rest.trim_start();
        let eq = rest.find('=')?;
        let key = rest[..eq].trim_end();
        let value = rest[eq + 1..].trim_start();
        let quote = value.chars().next().filter(|c| matches!(c, '"' | '\''))?;
        let end = value[1..].find(quote)? + 1;
        if key == name {
            return unescape(&value[1..end]);
        }
        rest = &value[end + 1..];
    }
}

/// The text of the first `<NAME>…</NAME>` element in `xml`, unescaped (empty for
/// `<NAME/>`).
fn child_text<'a>(xml: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let mut at = 0;
    while let Some((tag, end)) = start_tag(xml, at) {
        if tag.name == name {
            if xml[..end].ends_with("/>") {
                return Some(Cow::Borrowed(""));
            }
            let close = format!("</{name}>");
            let stop = xml[end..].find(&close)? + end;
            return unescape(&xml[end..stop]);
        }
        at = end;
    }
    None
}

/// Whether `xml` holds an element named `name` (anywhere, the root included).
fn has_element(xml: &str, name: &str) -> bool {
    let mut at = 0;
    while let Some((tag, end)) = start_tag(xml, at) {
        if tag.name == name {
            return true;
        }
        at = end;
    }
    false
}

/// The name of the first child element of the first `<error/>` in `xml`: the stanza
/// error condition (RFC 6120 §8.3.3), e.g. `service-unavailable`.
fn error_condition(xml: &str) -> Option<&str> {
    let mut at = 0;
    while let Some((tag, end)) = start_tag(xml, at) {
        if tag.name == "error" {
            let (cond, _) = start_tag(xml, end)?;
            return Some(cond.name);
        }
        at = end;
    }
    None
}

/// One frame from the server, as far as the bench cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// `<open/>`: the server's stream header.
    Open,
    /// `<stream:features/>`: whether it offers SASL PLAIN and resource binding.
    Features {
        /// PLAIN among the SASL mechanisms.
        plain: bool,
        /// Resource binding offered (after authentication).
        bind: bool,
    },
    /// SASL `<success/>`.
    Success,
    /// SASL `<failure/>` with its condition.
    Failure(&'a str),
    /// The answer to [`bind`]: the full JID, or the error condition.
    Bound(Result<Cow<'a, str>, &'a str>),
    /// A `<message/>`.
    Message {
        /// The sender's JID.
        from: Cow<'a, str>,
        /// Its body, if any.
        body: Option<Cow<'a, str>>,
        /// The error condition of a `type="error"` message.
        error: Option<&'a str>,
    },
    /// A `<presence/>`.
    Presence {
        /// The sender's JID.
        from: Cow<'a, str>,
        /// The error condition of a `type="error"` presence.
        error: Option<&'a str>,
        /// A MUC presence with status 110: the room telling a user about itself.
        self_in_room: bool,
    },
    /// `<close/>` or a stream error.
    Closed(&'a str),
    /// Anything else (other `iq`s, unknown elements), by element name.
    Other(&'a str),
}

impl<'a> Frame<'a> {
    /// Reads one frame; `None` when it does not start with an element.
    pub(crate) fn parse(xml: &'a str) -> Option<Self> {
        let (root, _) = start_tag(xml, 0)?;
        let kind = attr(root.attrs, "type");
        let is_error = kind.as_deref() == Some("error");
        let from = || attr(root.attrs, "from").unwrap_or(Cow::Borrowed(""));
        Some(match root.name {
            "open" => Self::Open,
            "stream:features" | "features" => Self::Features {
                plain: xml.contains(">PLAIN</mechanism>"),
                bind: has_element(xml, "bind"),
            },
            "success" => Self::Success,
            "failure" => Self::Failure(start_tag(xml, root_end(xml)).map_or("", |(t, _)| t.name)),
            "close" => Self::Closed("close"),
            "stream:error" | "error" => {
                Self::Closed(start_tag(xml, root_end(xml)).map_or("stream-error", |(t, _)| t.name))
            }
            "iq" if attr(root.attrs, "id").as_deref() == Some(BIND_ID) => {
                Self::Bound(if is_error {
                    Err(error_condition(xml).unwrap_or("error"))
                } else {
                    child_text(xml, "jid").ok_or("no-jid")
                })
            }
            "message" => Self::Message {
                from: from(),
                body: child_text(xml, "body"),
                error: is_error.then(|| error_condition(xml).unwrap_or("error")),
            },
            "presence" => Self::Presence {
                from: from(),
                error: is_error.then(|| error_condition(xml).unwrap_or("error")),
                self_in_room: xml.contains(r#"code="110""#) || xml.contains("code='110'"),
            },
            name => Self::Other(name),
        })
    }
}

/// The offset just past the root's start tag.
fn root_end(xml: &str) -> usize {
    start_tag(xml, 0).map_or(xml.len(), |(_, end)| end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_written_by_the_client() {
        assert_eq!(
            open("localhost"),
            r#"<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="localhost" version="1.0"/>"#
        );
        // RFC 4616's example: "\0tim\0tanstaaftanstaaf".
        assert_eq!(
            auth_plain("tim", "tanstaaftanstaaf"),
            r#"<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">AHRpbQB0YW5zdGFhZnRhbnN0YWFm</auth>"#
        );
        assert!(bind().contains("<resource>bench</resource>"));
        assert_eq!(
            join_room("r@conference.localhost", "u-1"),
            r#"<presence xmlns="jabber:client" to="r@conference.localhost/u-1"><x xmlns="http://jabber.org/protocol/muc"><history maxstanzas="0"/></x></presence>"#
        );
        let mut s = String::from("leftover");
        encode_message(&mut s, "b@localhost", false, "k1", "deadbeef 1 2 3 xx");
        assert_eq!(
            s,
            r#"<message xmlns="jabber:client" to="b@localhost" type="chat" id="k1"><body>deadbeef 1 2 3 xx</body></message>"#
        );
        encode_message(&mut s, "r@c", true, "k2", "a<b & \"c\"");
        assert!(s.contains(r#"type="groupchat""#), "{s}");
        assert!(s.contains("<body>a&lt;b &amp; &quot;c&quot;</body>"), "{s}");
    }

    #[test]
    fn escaping_round_trips() {
        assert!(matches!(escape("plain"), Cow::Borrowed("plain")));
        let tricky = r#"<a href='x'>&"#;
        assert_eq!(unescape(&escape(tricky)).unwrap(), tricky);
        assert_eq!(unescape("&#65;&#x42;c").unwrap(), "ABc");
        assert!(unescape("&bogus;").is_none());
        assert!(unescape("a & b").is_none());
    }

    #[test]
    fn the_handshake_frames_of_ejabberd() {
        let open = r#"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' id='1' from='localhost' version='1.0' xml:lang='en'/>"#;
        assert_eq!(Frame::parse(open), Some(Frame::Open));
        let features = r#"<stream:features xmlns:stream='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism><mechanism>X-OAUTH2</mechanism></mechanisms><register xmlns='http://jabber.org/features/iq-register'/></stream:features>"#;
        assert_eq!(
            Frame::parse(features),
            Some(Frame::Features {
                plain: true,
                bind: false
            })
        );
        let features = r#"<stream:features xmlns:stream='http://etherx.jabber.org/streams'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session></stream:features>"#;
        assert_eq!(
            Frame::parse(features),
            Some(Frame::Features {
                plain: false,
                bind: true
            })
        );
        assert_eq!(
            Frame::parse(r#"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"#),
            Some(Frame::Success)
        );
        assert_eq!(
            Frame::parse(
                r#"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/><text xml:lang='en'>Invalid username or password</text></failure>"#
            ),
            Some(Frame::Failure("not-authorized"))
        );
        let bound = r#"<iq xml:lang='en' xmlns='jabber:client' type='result' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>u-1@localhost/bench</jid></bind></iq>"#;
        assert_eq!(
            Frame::parse(bound),
            Some(Frame::Bound(Ok(Cow::Borrowed("u-1@localhost/bench"))))
        );
        let refused = r#"<iq xmlns='jabber:client' type='error' id='bind'><error type='cancel'><not-allowed xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"#;
        assert_eq!(
            Frame::parse(refused),
            Some(Frame::Bound(Err("not-allowed")))
        );
        assert_eq!(
            Frame::parse(r#"<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>"#),
            Some(Frame::Closed("close"))
        );
        assert_eq!(
            Frame::parse(
                r#"<stream:error xmlns:stream='http://etherx.jabber.org/streams'><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"#
            ),
            Some(Frame::Closed("conflict"))
        );
    }

    #[test]
    fn messages_and_presences() {
        let m = r#"<message xml:lang='en' to='b@localhost/bench' from='a@localhost/bench' type='chat' id='k1' xmlns='jabber:client'><body>deadbeef 5 1 2 xx</body></message>"#;
        let Some(Frame::Message { from, body, error }) = Frame::parse(m) else {
            panic!("not a message");
        };
        assert_eq!(from, "a@localhost/bench");
        assert_eq!(body.as_deref(), Some("deadbeef 5 1 2 xx"));
        assert!(matches!(body, Some(Cow::Borrowed(_))));
        assert_eq!(error, None);
        assert_eq!(
            crate::codec::decode_body(&body.unwrap()).map(|k| k.sender),
            Some(1)
        );

        let e = r#"<message from='b@localhost' to='a@localhost/bench' type='error' id='k1' xmlns='jabber:client'><body>x</body><error code='503' type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"#;
        let Some(Frame::Message { error, .. }) = Frame::parse(e) else {
            panic!("not a message");
        };
        assert_eq!(error, Some("service-unavailable"));

        let escaped = r#"<message from="r@c/n" type="groupchat"><body>a &amp; b</body></message>"#;
        let Some(Frame::Message { body, .. }) = Frame::parse(escaped) else {
            panic!("not a message");
        };
        assert_eq!(body.as_deref(), Some("a & b"));
        let empty = r#"<message from="x"><body/></message>"#;
        let Some(Frame::Message { body, .. }) = Frame::parse(empty) else {
            panic!("not a message");
        };
        assert_eq!(body.as_deref(), Some(""));

        let own = r#"<presence xml:lang='en' to='u-1@localhost/bench' from='u-1@localhost/bench' xmlns='jabber:client'/>"#;
        assert_eq!(
            Frame::parse(own),
            Some(Frame::Presence {
                from: Cow::Borrowed("u-1@localhost/bench"),
                error: None,
                self_in_room: false
            })
        );
        let joined = r#"<presence from='g@conference.localhost/u-1' to='u-1@localhost/bench' xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc#user'><item jid='u-1@localhost/bench' role='participant' affiliation='none'/><status code='110'/></x></presence>"#;
        let Some(Frame::Presence { self_in_room, .. }) = Frame::parse(joined) else {
            panic!("not a presence");
        };
        assert!(self_in_room);
        let refused = r#"<presence from='g@conference.localhost/u-1' type='error'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"#;
        let Some(Frame::Presence { error, .. }) = Frame::parse(refused) else {
            panic!("not a presence");
        };
        assert_eq!(error, Some("item-not-found"));
    }

    #[test]
    fn other_frames() {
        assert_eq!(
            Frame::parse(r#"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"#),
            Some(Frame::Other("iq"))
        );
        assert_eq!(
            Frame::parse("<?xml version='1.0'?><r/>"),
            Some(Frame::Other("r"))
        );
        assert_eq!(Frame::parse("no markup"), None);
        assert_eq!(Frame::parse(""), None);
        assert_eq!(attr(r#" a="1" b = '2'"#, "b").as_deref(), Some("2"));
        assert_eq!(attr(r#" a="1""#, "c"), None);
    }
}
