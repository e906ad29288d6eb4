//! The bare relay: the floor ("physical limit") that chorus and its peers are compared
//! with. A tokio-tungstenite WebSocket server with small buffers that does nothing but
//! forward: a client joins rooms and every message sent to a room is written, as the
//! same frame, to every member (the sender included, like a chorus echo). No
//! authentication, storage, ordering numbers or acknowledgements.
//!
//! Frames, all text:
//!
//! - client → relay `J ROOM`: join `ROOM`; the relay answers `J ROOM` when done;
//! - client → relay `M ROOM BODY`: the relay writes this frame to every member.

use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Writes a join frame.
pub(crate) fn encode_join(room: &str) -> String {
    format!("J {room}")
}

/// Writes a message frame into `out` (cleared first).
pub(crate) fn encode_message(out: &mut String, room: &str, body: &str) {
    out.clear();
    let _ = write!(out, "M {room} {body}");
}

/// A frame of the relay protocol.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// `J ROOM`.
    Join(&'a str),
    /// `M ROOM BODY`.
    Message {
        /// The room.
        room: &'a str,
        /// The body.
        body: &'a str,
    },
}

impl<'a> Frame<'a> {
    /// Reads a frame; `None` when it is not one.
    pub(crate) fn parse(text: &'a str) -> Option<Self> {
        let (kind, rest) = text.split_once(' ')?;
        match kind {
            "J" if !rest.is_empty() && !rest.contains(' ') => Some(Self::Join(rest)),
            "M" => {
                let (room, body) = rest.split_once(' ')?;
                (!room.is_empty()).then_some(Self::Message { room, body })
            }
            _ => None,
        }
    }
}

type Outbox = mpsc::UnboundedSender<Utf8Bytes>;
/// The members of a room: connection id and outbox.
type Members = Vec<(u64, Outbox)>;

/// Rooms: name → (connection id, its outbox) of each member.
#[derive(Default)]
struct Rooms {
    rooms: RwLock<HashMap<Box<str>, Members>>,
    next_id: AtomicU64,
}

impl Rooms {
    fn join(&self, room: &str, id: u64, outbox: &Outbox) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        rooms
            .entry(room.into())
            .or_default()
            .push((id, outbox.clone()));
    }

    fn leave(&self, room: &str, id: u64) {
        let mut rooms = self.rooms.write().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = rooms.get_mut(room) {
            members.retain(|(m, _)| *m != id);
            if members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    fn send(&self, room: &str, frame: &Utf8Bytes) {
        let rooms = self.rooms.read().unwrap_or_else(|e| e.into_inner());
        for (_, outbox) in rooms.get(room).into_iter().flatten() {
            let _ = outbox.send(frame.clone());
        }
    }
}

/// Accepts WebSocket connections on `listener` and relays between them, forever.
/// `buffer` is the read and write buffer size of each connection, bytes.
pub async fn serve_relay(listener: TcpListener, buffer: usize) -> std::io::Result<()> {
    let rooms = Arc::new(Rooms::default());
    let config = WebSocketConfig::default()
        .read_buffer_size(buffer)
        .write_buffer_size(buffer);
    loop {
        let (stream, _) = listener.accept().await?;
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            connection(stream, config, &rooms).await;
        });
    }
}

/// One client until it goes: reads frames and relays them; writes what members sent.
async fn connection(stream: TcpStream, config: WebSocketConfig, rooms: &Rooms) {
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let id = rooms.next_id.fetch_add(1, Relaxed);
    let (outbox, mut inbox) = mpsc::unbounded_channel::<Utf8Bytes>();
    let (mut sink, mut stream) = ws.split();
    let mut joined: Vec<Box<str>> = Vec::new();
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => match Frame::parse(&text) {
                    Some(Frame::Join(room)) => {
                        rooms.join(room, id, &outbox);
                        joined.push(room.into());
                        if sink.send(Message::Text(text.clone())).await.is_err() {
                            break;
                        }
                    }
                    Some(Frame::Message { room, .. }) => rooms.send(room, &text),
                    None => {}
                },
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            Some(frame) = inbox.recv() => {
                let mut result = sink.feed(Message::Text(frame)).await;
                while result.is_ok() {
                    match inbox.try_recv() {
                        Ok(frame) => result = sink.feed(Message::Text(frame)).await,
                        Err(_) => break,
                    }
                }
                if result.is_err() || sink.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    for room in joined {
        rooms.leave(&room, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        assert_eq!(Frame::parse(&encode_join("r-1")), Some(Frame::Join("r-1")));
        let mut s = String::from("leftover");
        encode_message(&mut s, "r-1", "deadbeef 1 2 3 xx");
        assert_eq!(s, "M r-1 deadbeef 1 2 3 xx");
        assert_eq!(
            Frame::parse(&s),
            Some(Frame::Message {
                room: "r-1",
                body: "deadbeef 1 2 3 xx"
            })
        );
        assert_eq!(Frame::parse("J "), None);
        assert_eq!(Frame::parse("J a b"), None);
        assert_eq!(Frame::parse("M room"), None);
        assert_eq!(Frame::parse("X a b"), None);
        assert_eq!(Frame::parse(""), None);
    }

    #[tokio::test]
    async fn members_get_every_message_of_their_rooms() {
        let rooms = Rooms::default();
        let (a, mut a_in) = mpsc::unbounded_channel();
        let (b, mut b_in) = mpsc::unbounded_channel();
        rooms.join("r", 1, &a);
        rooms.join("r", 2, &b);
        rooms.join("s", 2, &b);
        rooms.send("r", &Utf8Bytes::from_static("M r hi"));
        rooms.send("s", &Utf8Bytes::from_static("M s only b"));
        assert_eq!(a_in.recv().await.unwrap().as_str(), "M r hi");
        assert!(a_in.try_recv().is_err());
        assert_eq!(b_in.recv().await.unwrap().as_str(), "M r hi");
        assert_eq!(b_in.recv().await.unwrap().as_str(), "M s only b");
        rooms.leave("r", 2);
        rooms.leave("s", 2);
        rooms.send("r", &Utf8Bytes::from_static("M r again"));
        assert!(b_in.try_recv().is_err());
        assert_eq!(a_in.recv().await.unwrap().as_str(), "M r again");
        assert!(!rooms.rooms.read().unwrap().contains_key("s"));
    }
}
