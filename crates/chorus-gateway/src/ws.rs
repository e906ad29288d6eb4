//! WebSocket sessions: `GET /api/v1/ws`.
//!
//! One task per connection reads client frames and writes server frames. Frames for
//! the session arrive from fan-out through a bounded queue; when the client does not
//! read fast enough for the queue to drain, the session is closed with a reason and
//! the client resumes with `sync`, so a slow reader never grows server memory.
//!
//! The session keeps, per conversation, the range of `seq`s it wrote: live `message`
//! frames go out in increasing `seq`, a redelivered one is skipped and a gap is filled
//! from the store first. A `sync` replays what the client asks for minus what it
//! already got (so a client that syncs after live frames arrived sees older messages
//! after newer ones, each once: clients should `sync` right after `ready`).

use crate::auth::bearer;
use crate::error::ApiError;
use crate::http::ApiQuery;
use crate::queue::{QueueReceiver, queue};
use crate::send::{Change, Submission, notify_route, require_member, submit_pipelined};
use crate::sessions::{Out, Outbound, SessionHandle};
use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chorus_core::event::StageEvent;
use chorus_core::model::{Message, User};
use chorus_core::wire::{ClientFrame, ServerFrame};
use chorus_core::{ConversationId, ErrorCode, SessionId};
use chorus_store::Page;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Close code and reason when the node shuts down.
pub const CLOSE_GOING_AWAY: (u16, &str) = (1001, "server shutting down; reconnect and sync");
/// Close code and reason when the client does not read its frames.
pub const CLOSE_OVERFLOW: (u16, &str) = (1008, "too many unread frames; reconnect and sync");
/// Close code and reason when the client stops answering.
pub const CLOSE_IDLE: (u16, &str) = (1001, "no answer to ping");
/// Close code for frames over the hard limit (the socket cannot go on).
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a session refused by a limit.
const CLOSE_POLICY: u16 = 1008;

/// Frames drained from the queue per flush.
const WRITE_BATCH: usize = 64;
/// Sends a session may have waiting for the log's confirmation.
const MAX_PIPELINED: usize = 256;
/// History page used by `sync` and gap filling.
const REPLAY_PAGE: i64 = 500;

/// `?token=` for browsers, which cannot set headers on a WebSocket upgrade.
#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// Upgrades an authenticated request to a session.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<TokenQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if state.shutdown.is_cancelled() {
        return ApiError::new(ErrorCode::Unavailable, "server shutting down").into_response();
    }
    let token = bearer(&headers).map(str::to_owned).or(q.token);
    let Some(token) = token else {
        return ApiError::unauthorized("missing token (Authorization: Bearer or ?token=)")
            .into_response();
    };
    let user = match crate::auth::authenticate(&state, &token).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let limits = &state.limits;
    if state.sessions.of(user.id) >= limits.max_sessions_per_user {
        return too_many_sessions(limits.max_sessions_per_user).into_response();
    }
    ws.read_buffer_size(limits.ws_read_buffer)
        .write_buffer_size(limits.ws_write_buffer)
        .max_write_buffer_size(limits.ws_write_buffer.max(limits.max_frame_hard_bytes) * 2)
        .max_message_size(limits.max_frame_hard_bytes)
        .max_frame_size(limits.max_frame_hard_bytes)
        .on_upgrade(move |socket| {
            let tracker = state.tracker.clone();
            let max = state.limits.max_sessions_per_user;
            match Session::open(state, socket, user) {
                Ok((session, rx)) => tracker.track_future(session.run(rx)).boxed(),
                // Others of the user's sessions opened meanwhile, past the check above.
                Err(mut socket) => async move {
                    let _ = socket
                        .send(WsMessage::Close(Some(CloseFrame {
                            code: CLOSE_POLICY,
                            reason: Utf8Bytes::from(too_many_sessions(max).message),
                        })))
                        .await;
                }
                .boxed(),
            }
        })
}

fn too_many_sessions(max: usize) -> ApiError {
    ApiError::limit_reached(format!(
        "at most {max} sessions per user at once; close one first"
    ))
}

/// A contiguous range of `seq`s written to the client in one conversation.
#[derive(Clone, Copy, Debug)]
struct Written {
    first: i64,
    last: i64,
}

enum Flow {
    Continue,
    Close(Option<(u16, String)>),
}

struct Session {
    state: Arc<AppState>,
    socket: WebSocket,
    user: User,
    id: SessionId,
    /// The `seq`s written per conversation: always one contiguous range.
    sent: HashMap<ConversationId, Written>,
    /// Answers to `send`s whose records the log has not confirmed yet, in send order
    /// (none until the first `send`: an idle session does not pay for the set).
    acks: Option<FuturesOrdered<BoxFuture<'static, ServerFrame>>>,
}

impl Session {
    /// Makes the session reachable by fan-out. Not async, and `run` takes the session
    /// by value: an async fn keeps its arguments for its whole life, so building the
    /// session inside it would hold the socket twice in every idle session's future.
    /// Gives the socket back when the user holds as many sessions as they may.
    fn open(
        state: Arc<AppState>,
        socket: WebSocket,
        user: User,
    ) -> Result<(Self, QueueReceiver), Box<WebSocket>> {
        let id = SessionId::new();
        let (tx, rx) = queue(state.limits.session_queue);
        let max = state.limits.max_sessions_per_user;
        if !state
            .sessions
            .insert(user.id, SessionHandle { id, tx }, max)
        {
            return Err(Box::new(socket));
        }
        metrics::gauge!("chorus_ws_connections").increment(1.0);
        metrics::counter!("chorus_ws_connections_opened_total").increment(1);
        let session = Session {
            state,
            socket,
            user,
            id,
            sent: HashMap::new(),
            acks: None,
        };
        Ok((session, rx))
    }

    async fn run(mut self, rx: QueueReceiver) {
        let result = self.serve(&rx).await;
        drop(rx);
        let (state, user, id) = (&self.state, &self.user, self.id);
        if let Err(e) = result {
            tracing::debug!(session_id = %id, error = %e, "session ended with an error");
        }
        state.sessions.remove(user.id, id);
        metrics::gauge!("chorus_ws_connections").decrement(1.0);
        match state.registry.unregister(user.id, &state.node, id).await {
            Ok(true) => {
                let event = StageEvent::Presence {
                    user_id: user.id,
                    online: false,
                };
                if let Err(e) = notify_route(state, user.id.0.as_bytes(), &event).await {
                    tracing::warn!(user_id = %user.id, error = ?e, "presence not published");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(user_id = %user.id, error = %e, "session not unregistered"),
        }
    }

    async fn serve(&mut self, rx: &QueueReceiver) -> Result<(), axum::Error> {
        let state = self.state.clone();
        let came_online = state
            .registry
            .register(self.user.id, &state.node, self.id)
            .await
            .map_err(axum::Error::new)?;
        self.write(&ServerFrame::Ready {
            session_id: self.id,
            user: self.user.clone(),
        })
        .await?;
        if came_online {
            let event = StageEvent::Presence {
                user_id: self.user.id,
                online: true,
            };
            if let Err(e) = notify_route(&state, self.user.id.0.as_bytes(), &event).await {
                tracing::warn!(user_id = %self.user.id, error = ?e, "presence not published");
            }
        }
        let idle = Duration::from_secs(state.limits.idle_ping_secs.max(1));
        let mut last_heard = Instant::now();
        let mut pinged = false;
        let close = loop {
            let deadline = last_heard + if pinged { idle * 2 } else { idle };
            let flow = tokio::select! {
                biased;
                _ = state.shutdown.cancelled() => Flow::Close(Some(owned(CLOSE_GOING_AWAY))),
                _ = rx.overflowed() => Flow::Close(Some(owned(CLOSE_OVERFLOW))),
                Some(answer) = next_ack(&mut self.acks), if self.pipelined() > 0 => {
                    self.write(&answer).await?;
                    Flow::Continue
                }
                // With too many sends unconfirmed, stop reading: TCP pushes back.
                incoming = self.socket.recv(), if self.pipelined() < MAX_PIPELINED => {
                    last_heard = Instant::now();
                    pinged = false;
                    match incoming {
                        // Boxed: inlined, the handlers (sync's replay among them) would
                        // make every idle session's state machine as large as the
                        // busiest path.
                        Some(Ok(frame)) => Box::pin(self.on_frame(frame)).await?,
                        Some(Err(e)) => {
                            if is_too_big(&e) {
                                Flow::Close(Some((CLOSE_TOO_BIG, "frame over the hard limit".into())))
                            } else {
                                return Err(e);
                            }
                        }
                        None => Flow::Close(None),
                    }
                }
                out = rx.recv() => {
                    Box::pin(self.on_outbound(out)).await?;
                    Box::pin(self.drain(rx)).await?
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if pinged {
                        Flow::Close(Some(owned(CLOSE_IDLE)))
                    } else {
                        pinged = true;
                        self.socket.send(WsMessage::Ping(Default::default())).await?;
                        Flow::Continue
                    }
                }
            };
            if let Flow::Close(reason) = flow {
                break reason;
            }
        };
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(reason),
            };
            // Best effort: the peer may already be gone.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.socket.send(WsMessage::Close(Some(frame))),
            )
            .await;
        }
        Ok(())
    }

    /// Sends waiting for the log's confirmation.
    fn pipelined(&self) -> usize {
        self.acks.as_ref().map_or(0, FuturesOrdered::len)
    }

    /// Writes what else is queued (up to a batch) with one flush at the end.
    async fn drain(&mut self, rx: &QueueReceiver) -> Result<Flow, axum::Error> {
        for _ in 0..WRITE_BATCH {
            match rx.try_recv() {
                Some(out) => self.on_outbound(out).await?,
                None => break,
            }
        }
        tokio::select! {
            r = self.socket.flush() => r.map(|_| Flow::Continue),
            _ = rx.overflowed() => Ok(Flow::Close(Some(owned(CLOSE_OVERFLOW)))),
        }
    }

    async fn on_outbound(&mut self, out: Outbound) -> Result<(), axum::Error> {
        match out.get() {
            Out::Frame(text) => self.socket.feed(WsMessage::Text(text.clone())).await,
            Out::Message {
                conversation_id,
                seq,
                frame,
            } => {
                if self.advance(*conversation_id, *seq).await? {
                    self.socket.feed(WsMessage::Text(frame.clone())).await?;
                }
                Ok(())
            }
            Out::Withheld {
                conversation_id,
                seq,
            } => self.advance(*conversation_id, *seq).await.map(drop),
        }
    }

    /// Counts `seq` as written in its conversation, first filling from the store any
    /// gap before it; false if it was written already.
    async fn advance(
        &mut self,
        conversation_id: ConversationId,
        seq: i64,
    ) -> Result<bool, axum::Error> {
        match self.sent.get(&conversation_id).copied() {
            Some(w) if seq <= w.last => return Ok(false),
            Some(w) if seq > w.last + 1 => {
                metrics::counter!("chorus_ws_gap_fills_total").increment(1);
                self.replay(conversation_id, w.last, seq - 1, None).await?;
            }
            _ => {}
        }
        self.sent
            .entry(conversation_id)
            .and_modify(|w| w.last = seq)
            .or_insert(Written {
                first: seq,
                last: seq,
            });
        Ok(true)
    }

    async fn on_frame(&mut self, frame: WsMessage) -> Result<Flow, axum::Error> {
        let text = match frame {
            WsMessage::Text(text) => text,
            WsMessage::Binary(_) => {
                self.error(ApiError::bad_request(
                    "binary frames are not supported; send JSON text",
                ))
                .await?;
                return Ok(Flow::Continue);
            }
            WsMessage::Close(_) => return Ok(Flow::Close(None)),
            WsMessage::Ping(_) | WsMessage::Pong(_) => return Ok(Flow::Continue),
        };
        if text.len() > self.state.limits.max_frame_bytes {
            metrics::counter!("chorus_ws_frames_rejected_total", "code" => "too_large")
                .increment(1);
            let limit = self.state.limits.max_frame_bytes;
            self.error(ApiError::new(
                ErrorCode::TooLarge,
                format!("frame is {} bytes; the limit is {limit}", text.len()),
            ))
            .await?;
            return Ok(Flow::Continue);
        }
        let frame = match ClientFrame::parse(&text) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!("chorus_ws_frames_rejected_total", "code" => e.code.as_str())
                    .increment(1);
                self.error(ApiError::new(e.code, e.message)).await?;
                return Ok(Flow::Continue);
            }
        };
        match frame {
            ClientFrame::Send {
                client_msg_id,
                conversation_id,
                body,
                attachments,
                reply_to,
            } => {
                let message = Submission {
                    sender: self.user.id,
                    session: Some(self.id),
                    conversation: conversation_id,
                    client_msg_id,
                    body,
                    attachments,
                    reply_to,
                    change: None,
                };
                self.submit(message).await;
            }
            ClientFrame::Edit {
                client_msg_id,
                conversation_id,
                message_id,
                body,
            } => {
                let edit = Submission::change(
                    self.user.id,
                    Some(self.id),
                    conversation_id,
                    client_msg_id,
                    body,
                    Change::Edit(message_id),
                );
                self.submit(edit).await;
            }
            ClientFrame::Delete {
                client_msg_id,
                conversation_id,
                message_id,
            } => {
                let delete = Submission::change(
                    self.user.id,
                    Some(self.id),
                    conversation_id,
                    client_msg_id,
                    String::new(),
                    Change::Delete(message_id),
                );
                self.submit(delete).await;
            }
            ClientFrame::React {
                client_msg_id,
                conversation_id,
                message_id,
                emoji,
                remove,
            } => {
                let reaction = Change::React {
                    target: message_id,
                    emoji,
                    remove,
                };
                let react = Submission::change(
                    self.user.id,
                    Some(self.id),
                    conversation_id,
                    client_msg_id,
                    String::new(),
                    reaction,
                );
                self.submit(react).await;
            }
            ClientFrame::Sync { since } => self.sync(since).await?,
            ClientFrame::Typing { .. } | ClientFrame::Read { .. }
                if let Err(wait) = self.state.notices.check(self.user.id) =>
            {
                metrics::counter!("chorus_ws_frames_rejected_total", "code" => "rate_limited")
                    .increment(1);
                self.error(ApiError::rate_limited(wait)).await?;
            }
            ClientFrame::Typing { conversation_id } => {
                match require_member(&self.state, conversation_id, self.user.id).await {
                    Ok(_) => {
                        let event = StageEvent::Typing {
                            conversation_id,
                            user_id: self.user.id,
                            session_id: self.id,
                        };
                        if let Err(e) =
                            notify_route(&self.state, conversation_id.0.as_bytes(), &event).await
                        {
                            self.error(e).await?;
                        }
                    }
                    Err(e) => self.error(e).await?,
                }
            }
            ClientFrame::Read {
                conversation_id,
                seq,
            } => {
                if let Err(e) = self.read(conversation_id, seq).await {
                    self.error(e).await?;
                }
            }
            ClientFrame::Ping { nonce } => self.write(&ServerFrame::Pong { nonce }).await?,
        }
        Ok(Flow::Continue)
    }

    async fn read(&mut self, conversation: ConversationId, seq: i64) -> Result<(), ApiError> {
        if seq < 0 {
            return Err(ApiError::bad_request("seq must not be negative"));
        }
        require_member(&self.state, conversation, self.user.id).await?;
        let marker = self
            .state
            .directory
            .store()
            .mark_read(conversation, self.user.id, seq)
            .await?;
        let event = StageEvent::Read {
            conversation_id: conversation,
            user_id: self.user.id,
            seq: marker,
            session_id: self.id,
        };
        notify_route(&self.state, conversation.0.as_bytes(), &event).await
    }

    /// Replays what the client missed in the conversations it names, then tells it the
    /// last `seq` of all its conversations and who of its contacts is online.
    async fn sync(&mut self, since: HashMap<ConversationId, i64>) -> Result<(), axum::Error> {
        let store = self.state.directory.store().clone();
        // Read the high-water marks first: everything up to them is replayed below, and
        // anything later arrives live, so nothing falls in between.
        let last_seq: HashMap<ConversationId, i64> = match store.last_seqs(self.user.id).await {
            Ok(v) => v.into_iter().collect(),
            Err(e) => return self.error(e.into()).await,
        };
        let mut named: Vec<(ConversationId, i64)> = since.into_iter().collect();
        named.sort_unstable();
        for (conversation, after) in named {
            let Some(&upto) = last_seq.get(&conversation) else {
                let err = match require_member(&self.state, conversation, self.user.id).await {
                    Err(e) => e,
                    Ok(_) => ApiError::forbidden(format!(
                        "you are not a member of conversation {conversation}"
                    )),
                };
                self.error(err).await?;
                continue;
            };
            // Live frames may have come before this sync: replay what the client asked
            // for except what it already got, and never claim more than is stored.
            let after = after.max(0);
            let already = self.sent.get(&conversation).copied();
            self.replay(conversation, after, upto, already).await?;
            let written = match already {
                Some(w) => Written {
                    first: w.first.min(after + 1),
                    last: w.last.max(upto),
                },
                None => Written {
                    first: after.min(upto) + 1,
                    last: upto,
                },
            };
            self.sent.insert(conversation, written);
        }
        let contacts = store
            .contacts(self.user.id, self.state.presence_through_direct)
            .await
            .unwrap_or_default();
        let online = self
            .state
            .registry
            .online(&contacts)
            .await
            .unwrap_or_default();
        self.write(&ServerFrame::Synced { last_seq, online }).await
    }

    /// Writes stored messages with `after < seq <= upto`, in order, except those in
    /// `skip` (already written). The caller records what was written.
    async fn replay(
        &mut self,
        conversation: ConversationId,
        after: i64,
        upto: i64,
        skip: Option<Written>,
    ) -> Result<(), axum::Error> {
        let store = self.state.directory.store().clone();
        let mut after = after;
        while after < upto {
            let page = Page {
                after_seq: Some(after),
                before_seq: Some(upto + 1),
                limit: REPLAY_PAGE,
            };
            let messages: Vec<Message> = match store.messages(conversation, page).await {
                Ok(m) => m,
                Err(e) => return self.error(e.into()).await,
            };
            let Some(last) = messages.last().map(|m| m.seq) else {
                break;
            };
            for message in messages {
                if skip.is_some_and(|w| (w.first..=w.last).contains(&message.seq)) {
                    continue;
                }
                self.socket
                    .feed(WsMessage::Text(
                        ServerFrame::Message { message }.to_json().into(),
                    ))
                    .await?;
            }
            self.socket.flush().await?;
            after = last;
        }
        Ok(())
    }

    async fn write(&mut self, frame: &ServerFrame) -> Result<(), axum::Error> {
        self.socket
            .send(WsMessage::Text(frame.to_json().into()))
            .await
    }

    /// Submits a message or a change; its answer goes out in submission order,
    /// refusals included.
    async fn submit(&mut self, message: Submission) {
        let client_msg_id = message.client_msg_id.clone();
        let answer: BoxFuture<'static, ServerFrame> =
            match submit_pipelined(&self.state, message).await {
                Ok(pending) => Box::pin(async move {
                    match pending.await {
                        Ok(accepted) => accepted.frame(client_msg_id),
                        Err(e) => e.to_frame(Some(client_msg_id)),
                    }
                }),
                Err(e) => Box::pin(std::future::ready(e.to_frame(Some(client_msg_id)))),
            };
        self.acks
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(answer);
    }

    async fn error(&mut self, e: ApiError) -> Result<(), axum::Error> {
        self.write(&e.to_frame(None)).await
    }
}

/// The next confirmed answer, in send order; `None` when no send is pending (the
/// session polls it only while some are).
async fn next_ack(
    acks: &mut Option<FuturesOrdered<BoxFuture<'static, ServerFrame>>>,
) -> Option<ServerFrame> {
    match acks {
        Some(acks) => acks.next().await,
        None => None,
    }
}

fn owned((code, reason): (u16, &str)) -> (u16, String) {
    (code, reason.to_owned())
}

fn is_too_big(e: &axum::Error) -> bool {
    // tungstenite reports the limit as a capacity error ("Space limit exceeded: Message
    // too long"); axum does not re-export the error type to match on.
    e.to_string().contains("Space limit exceeded")
}
