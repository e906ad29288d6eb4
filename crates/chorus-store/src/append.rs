//! What [`crate::Store::append_messages`] stores, decided without the database: each
//! backend reads what the batch needs (the messages already stored among it, the
//! messages its changes target, the reactions they touch and the `last_seq` of its
//! conversations), asks [`plan`], then writes what it returns.

use crate::{Appended, NewMessage, Result, from_millis, millis};
use chorus_core::model::{Message, MessageKind};
use chorus_core::{ConversationId, MessageId, UserId};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One reaction: who reacted to which message with what.
pub(crate) type Reaction = (MessageId, UserId, String);

/// What the batch reads before it is planned.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// The messages of the batch stored already, and those its changes target, by id.
    pub messages: HashMap<MessageId, Message>,
    /// The `last_seq` of each of its conversations that exists.
    pub last_seq: HashMap<ConversationId, i64>,
    /// The reactions its reactions would add or take back that are there.
    pub reactions: HashSet<Reaction>,
}

/// What to write for a batch, besides the new entries.
#[derive(Debug)]
pub(crate) struct AppendPlan {
    /// What became of each message of the batch, in batch order; the [`Appended::New`]
    /// ones are the rows to insert.
    pub appended: Vec<Appended>,
    /// The new `last_seq` of each conversation the batch added to, by conversation id.
    pub last_seqs: Vec<(ConversationId, i64)>,
    /// Messages edited, each once with its latest edit, to write after the inserts.
    pub edits: Vec<Edit>,
    /// Messages deleted, to erase after the inserts and edits.
    pub deletes: Vec<Deleted>,
    /// Reactions to add.
    pub reactions_added: Vec<Reaction>,
    /// Reactions to take back.
    pub reactions_removed: Vec<Reaction>,
}

/// A message's latest edit in a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Edit {
    /// The message edited.
    pub target: MessageId,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Its `seq`.
    pub seq: i64,
    /// Its body now.
    pub body: String,
    /// Whom it mentions now.
    pub mentions: Vec<UserId>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A message deleted in a batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Deleted {
    /// The message.
    pub target: MessageId,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Its `seq`.
    pub seq: i64,
}

impl AppendPlan {
    /// The messages to insert, in batch order.
    pub(crate) fn new_messages(&self) -> Vec<&Message> {
        self.appended.iter().filter_map(Appended::as_new).collect()
    }

    /// Whether the batch changes stored messages (besides adding entries).
    pub(crate) fn has_changes(&self) -> bool {
        !(self.edits.is_empty()
            && self.deletes.is_empty()
            && self.reactions_added.is_empty()
            && self.reactions_removed.is_empty())
    }
}

/// The conversations of `batch`, each once, in id order (the order to lock them in).
pub(crate) fn conversations(batch: &[NewMessage]) -> Vec<ConversationId> {
    let mut ids: Vec<ConversationId> = batch.iter().map(|m| m.conversation_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The ids to look up among the stored messages: the batch's own and the messages its
/// changes target, each once.
pub(crate) fn lookups(batch: &[NewMessage]) -> Vec<MessageId> {
    let mut ids: Vec<MessageId> = batch
        .iter()
        .flat_map(|m| std::iter::once(m.message_id).chain(m.target_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The messages the batch's reactions target, each once (whose reactions to read).
pub(crate) fn reaction_targets(batch: &[NewMessage]) -> Vec<MessageId> {
    let mut ids: Vec<MessageId> = batch
        .iter()
        .filter(|m| m.kind == MessageKind::Reaction)
        .filter_map(|m| m.target_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Numbers the entries of `batch`, in batch order, after their conversation's
/// `last_seq` (1, 2, 3, … with no gaps), given what is `stored`. An entry stored before,
/// or earlier in this batch, is not stored again: the stored copy is returned. A change
/// applies to the state left by the entries before it, stored or in this batch; one
/// that changes nothing is not stored. Times are kept to the millisecond, as stored.
pub(crate) fn plan(batch: &[NewMessage], stored: Stored) -> Result<AppendPlan> {
    let Stored {
        messages: mut stored,
        mut last_seq,
        reactions: had,
    } = stored;
    let mut reactions = had.clone();
    let mut appended = Vec::with_capacity(batch.len());
    let mut advanced: BTreeMap<ConversationId, i64> = BTreeMap::new();
    let mut edits: Vec<Edit> = Vec::new();
    let mut deletes: Vec<Deleted> = Vec::new();
    for m in batch {
        if let Some(existing) = stored.get(&m.message_id) {
            appended.push(Appended::Existing(existing.clone()));
            continue;
        }
        let Some(last) = last_seq.get_mut(&m.conversation_id) else {
            appended.push(Appended::NoConversation);
            continue;
        };
        let sent_at = from_millis(millis(m.sent_at))?;
        if m.kind != MessageKind::Text {
            let target = m.target_id.and_then(|t| stored.get_mut(&t)).filter(|t| {
                t.kind == MessageKind::Text && !t.deleted && t.conversation_id == m.conversation_id
            });
            let Some(target) = target else {
                appended.push(Appended::TargetGone);
                continue;
            };
            match m.kind {
                MessageKind::Text => unreachable!("text is not a change"),
                MessageKind::Edit => {
                    target.edited_at = Some(sent_at);
                    let edit = Edit {
                        target: target.message_id,
                        conversation_id: target.conversation_id,
                        seq: target.seq,
                        body: m.body.clone(),
                        mentions: m.mentions.clone(),
                        at: sent_at,
                    };
                    match edits.iter_mut().find(|e| e.target == edit.target) {
                        Some(earlier) => *earlier = edit,
                        None => edits.push(edit),
                    }
                }
                MessageKind::Delete => {
                    target.deleted = true;
                    target.body.clear();
                    target.attachments.clear();
                    deletes.push(Deleted {
                        target: target.message_id,
                        conversation_id: target.conversation_id,
                        seq: target.seq,
                    });
                }
                MessageKind::Reaction => {
                    let key = (
                        target.message_id,
                        m.sender_id,
                        m.emoji.clone().unwrap_or_default(),
                    );
                    let changed = if m.remove {
                        reactions.remove(&key)
                    } else {
                        reactions.insert(key)
                    };
                    if !changed {
                        appended.push(Appended::Unchanged);
                        continue;
                    }
                }
            }
        }
        *last += 1;
        advanced.insert(m.conversation_id, *last);
        let message = Message {
            message_id: m.message_id,
            client_msg_id: m.client_msg_id.clone(),
            conversation_id: m.conversation_id,
            seq: *last,
            sender_id: m.sender_id,
            body: m.body.clone(),
            sent_at,
            origin: m.origin,
            attachments: m.attachments.clone(),
            reply_to: m.reply_to,
            mentions: m.mentions.clone(),
            kind: m.kind,
            target_id: m.target_id,
            emoji: m.emoji.clone(),
            remove: m.remove,
            deleted: false,
            edited_at: None,
        };
        stored.insert(m.message_id, message.clone());
        appended.push(Appended::New(message));
    }
    // An edit of a message deleted later in the batch has nothing left to write.
    edits.retain(|e| !deletes.iter().any(|d| d.target == e.target));
    let mut reactions_added: Vec<Reaction> = reactions.difference(&had).cloned().collect();
    let mut reactions_removed: Vec<Reaction> = had.difference(&reactions).cloned().collect();
    reactions_added.sort_unstable();
    reactions_removed.sort_unstable();
    Ok(AppendPlan {
        appended,
        last_seqs: advanced.into_iter().collect(),
        edits,
        deletes,
        reactions_added,
        reactions_removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::UserId;
    use chorus_core::model::Origin;
    use chrono::{TimeZone, Utc};

    fn new_message(conversation: ConversationId, key: &str) -> NewMessage {
        let sender = UserId(uuid::Uuid::from_u128(7));
        NewMessage::text(
            sender,
            conversation,
            key,
            &format!("body {key}"),
            Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
        )
    }

    fn stored(
        messages: HashMap<MessageId, Message>,
        last_seq: HashMap<ConversationId, i64>,
    ) -> Stored {
        Stored {
            messages,
            last_seq,
            reactions: HashSet::new(),
        }
    }

    fn conversation(n: u128) -> ConversationId {
        ConversationId(uuid::Uuid::from_u128(n))
    }

    /// `(conversation, seq)` of each new message and `None` for the others.
    fn seqs(plan: &AppendPlan) -> Vec<Option<(ConversationId, i64)>> {
        plan.appended
            .iter()
            .map(|a| a.as_new().map(|m| (m.conversation_id, m.seq)))
            .collect()
    }

    #[test]
    fn messages_are_numbered_after_last_seq_without_gaps() {
        let c = conversation(1);
        let batch = [
            new_message(c, "a"),
            new_message(c, "b"),
            new_message(c, "c"),
        ];
        let plan = plan(&batch, stored(HashMap::new(), HashMap::from([(c, 4)]))).unwrap();
        assert_eq!(seqs(&plan), vec![Some((c, 5)), Some((c, 6)), Some((c, 7))]);
        assert_eq!(plan.last_seqs, vec![(c, 7)]);
        let new = plan.new_messages();
        assert_eq!(new.len(), 3);
        assert_eq!(new[1].message_id, batch[1].message_id);
        assert_eq!(new[1].body, "body b");
        assert_eq!(new[1].sent_at.timestamp_subsec_nanos(), 123_000_000);
    }

    #[test]
    fn a_message_repeated_inside_one_batch_is_stored_once() {
        let c = conversation(1);
        let batch = [
            new_message(c, "a"),
            new_message(c, "b"),
            new_message(c, "a"),
        ];
        let plan = plan(&batch, stored(HashMap::new(), HashMap::from([(c, 0)]))).unwrap();
        assert_eq!(seqs(&plan), vec![Some((c, 1)), Some((c, 2)), None]);
        let Appended::Existing(repeat) = &plan.appended[2] else {
            panic!("the repeat is not Existing: {:?}", plan.appended[2]);
        };
        assert_eq!(repeat.seq, 1);
        assert_eq!(repeat.message_id, batch[0].message_id);
        assert_eq!(plan.new_messages().len(), 2);
        assert_eq!(plan.last_seqs, vec![(c, 2)]);
    }

    #[test]
    fn an_already_stored_message_is_returned_as_stored_and_takes_no_seq() {
        let c = conversation(1);
        let batch = [new_message(c, "old"), new_message(c, "new")];
        let kept = Message {
            mentions: Vec::new(),
            reply_to: None,
            attachments: Vec::new(),
            message_id: batch[0].message_id,
            client_msg_id: "old".into(),
            conversation_id: c,
            seq: 3,
            sender_id: batch[0].sender_id,
            body: "as stored".into(),
            sent_at: Utc.timestamp_opt(1, 0).unwrap(),
            origin: Origin::User,
            kind: MessageKind::Text,
            target_id: None,
            emoji: None,
            remove: false,
            deleted: false,
            edited_at: None,
        };
        let plan = plan(
            &batch,
            stored(
                HashMap::from([(kept.message_id, kept)]),
                HashMap::from([(c, 3)]),
            ),
        )
        .unwrap();
        let Appended::Existing(existing) = &plan.appended[0] else {
            panic!("the stored one is not Existing: {:?}", plan.appended[0]);
        };
        assert_eq!((existing.seq, existing.body.as_str()), (3, "as stored"));
        assert_eq!(seqs(&plan), vec![None, Some((c, 4))]);
        assert_eq!(plan.last_seqs, vec![(c, 4)]);
    }

    #[test]
    fn a_message_to_a_missing_conversation_is_not_stored() {
        let (known, missing) = (conversation(1), conversation(2));
        let batch = [new_message(missing, "a"), new_message(known, "b")];
        let plan = plan(&batch, stored(HashMap::new(), HashMap::from([(known, 0)]))).unwrap();
        assert!(matches!(plan.appended[0], Appended::NoConversation));
        assert_eq!(seqs(&plan), vec![None, Some((known, 1))]);
        assert_eq!(plan.last_seqs, vec![(known, 1)]);
    }

    #[test]
    fn interleaved_conversations_are_each_numbered_in_batch_order() {
        let (a, b) = (conversation(2), conversation(1));
        let batch = [
            new_message(a, "1"),
            new_message(b, "2"),
            new_message(a, "3"),
            new_message(b, "4"),
            new_message(a, "5"),
        ];
        let plan = plan(
            &batch,
            stored(HashMap::new(), HashMap::from([(a, 10), (b, 0)])),
        )
        .unwrap();
        assert_eq!(
            seqs(&plan),
            vec![
                Some((a, 11)),
                Some((b, 1)),
                Some((a, 12)),
                Some((b, 2)),
                Some((a, 13))
            ]
        );
        let keys: Vec<&str> = plan
            .new_messages()
            .iter()
            .map(|m| m.client_msg_id.as_str())
            .collect();
        assert_eq!(keys, ["1", "2", "3", "4", "5"]);
        assert_eq!(plan.last_seqs, vec![(b, 2), (a, 13)]);
    }

    #[test]
    fn a_batch_with_nothing_new_advances_no_conversation() {
        let batch = [new_message(conversation(1), "a")];
        let plan = plan(&batch, stored(HashMap::new(), HashMap::new())).unwrap();
        assert!(plan.new_messages().is_empty());
        assert!(plan.last_seqs.is_empty());
    }

    #[test]
    fn conversations_are_listed_once_in_id_order() {
        let batch = [
            new_message(conversation(3), "a"),
            new_message(conversation(1), "b"),
            new_message(conversation(3), "c"),
        ];
        assert_eq!(
            conversations(&batch),
            vec![conversation(1), conversation(3)]
        );
    }

    fn change(
        conversation: ConversationId,
        key: &str,
        kind: MessageKind,
        target: MessageId,
    ) -> NewMessage {
        NewMessage {
            kind,
            target_id: Some(target),
            body: String::new(),
            ..new_message(conversation, key)
        }
    }

    fn reaction(c: ConversationId, key: &str, target: MessageId, remove: bool) -> NewMessage {
        NewMessage {
            emoji: Some("👍".into()),
            remove,
            ..change(c, key, MessageKind::Reaction, target)
        }
    }

    #[test]
    fn changes_take_seqs_and_apply_in_batch_order() {
        let c = conversation(1);
        let text = new_message(c, "t");
        let t = text.message_id;
        let batch = [
            text,
            NewMessage {
                body: "first".into(),
                ..change(c, "e1", MessageKind::Edit, t)
            },
            NewMessage {
                body: "second".into(),
                ..change(c, "e2", MessageKind::Edit, t)
            },
            reaction(c, "r1", t, false),
            reaction(c, "r2", t, false),
            reaction(c, "r3", t, true),
            reaction(c, "r4", t, true),
        ];
        let plan = plan(&batch, stored(HashMap::new(), HashMap::from([(c, 0)]))).unwrap();
        assert_eq!(
            seqs(&plan),
            vec![
                Some((c, 1)),
                Some((c, 2)),
                Some((c, 3)),
                Some((c, 4)),
                None,
                Some((c, 5)),
                None
            ]
        );
        assert!(matches!(plan.appended[4], Appended::Unchanged));
        assert!(matches!(plan.appended[6], Appended::Unchanged));
        assert_eq!(plan.edits.len(), 1, "one write per message edited");
        assert_eq!(
            (plan.edits[0].body.as_str(), plan.edits[0].seq),
            ("second", 1)
        );
        assert!(plan.reactions_added.is_empty(), "added, then taken back");
        assert!(plan.reactions_removed.is_empty());
        assert_eq!(plan.last_seqs, vec![(c, 5)]);
    }

    #[test]
    fn a_deleted_message_takes_no_more_changes() {
        let c = conversation(1);
        let text = new_message(c, "t");
        let t = text.message_id;
        let mut target = plan(
            std::slice::from_ref(&text),
            stored(HashMap::new(), HashMap::from([(c, 0)])),
        )
        .unwrap()
        .new_messages()[0]
            .clone();
        target.body = "secret".into();
        let batch = [
            change(c, "e", MessageKind::Edit, t),
            change(c, "d1", MessageKind::Delete, t),
            change(c, "d2", MessageKind::Delete, t),
            change(c, "e2", MessageKind::Edit, t),
            reaction(c, "r", t, false),
        ];
        let plan = plan(
            &batch,
            stored(HashMap::from([(t, target)]), HashMap::from([(c, 1)])),
        )
        .unwrap();
        assert_eq!(
            seqs(&plan),
            vec![Some((c, 2)), Some((c, 3)), None, None, None]
        );
        assert!(
            plan.edits.is_empty(),
            "an edit of a deleted message is not written"
        );
        assert_eq!(
            plan.deletes,
            vec![Deleted {
                target: t,
                conversation_id: c,
                seq: 1
            }]
        );
        assert!(plan.reactions_added.is_empty());
    }

    #[test]
    fn a_change_needs_a_stored_message_of_its_conversation() {
        let (c, other) = (conversation(1), conversation(2));
        let elsewhere = new_message(other, "t");
        let mut kept = plan(
            std::slice::from_ref(&elsewhere),
            stored(HashMap::new(), HashMap::from([(other, 0)])),
        )
        .unwrap()
        .new_messages()[0]
            .clone();
        let mut reacted = kept.clone();
        reacted.message_id = MessageId(uuid::Uuid::from_u128(99));
        reacted.conversation_id = c;
        reacted.kind = MessageKind::Reaction;
        kept.seq = 1;
        let batch = [
            change(c, "a", MessageKind::Edit, elsewhere.message_id),
            change(
                c,
                "b",
                MessageKind::Delete,
                MessageId(uuid::Uuid::from_u128(5)),
            ),
            reaction(c, "c", reacted.message_id, false),
        ];
        let plan = plan(
            &batch,
            stored(
                HashMap::from([(kept.message_id, kept), (reacted.message_id, reacted)]),
                HashMap::from([(c, 3), (other, 1)]),
            ),
        )
        .unwrap();
        assert!(
            plan.appended
                .iter()
                .all(|a| matches!(a, Appended::TargetGone)),
            "{:?}",
            plan.appended
        );
        assert!(plan.last_seqs.is_empty());
    }

    #[test]
    fn reactions_there_are_taken_back_and_others_added() {
        let c = conversation(1);
        let text = new_message(c, "t");
        let t = text.message_id;
        let target = plan(
            std::slice::from_ref(&text),
            stored(HashMap::new(), HashMap::from([(c, 0)])),
        )
        .unwrap()
        .new_messages()[0]
            .clone();
        let batch = [
            reaction(c, "off", t, true),
            NewMessage {
                emoji: Some("🎉".into()),
                ..reaction(c, "on", t, false)
            },
            reaction(c, "again", t, false),
        ];
        let thumbs = (t, batch[0].sender_id, "👍".to_owned());
        let plan = plan(
            &batch,
            Stored {
                messages: HashMap::from([(t, target)]),
                last_seq: HashMap::from([(c, 1)]),
                reactions: HashSet::from([thumbs.clone()]),
            },
        )
        .unwrap();
        assert_eq!(seqs(&plan), vec![Some((c, 2)), Some((c, 3)), Some((c, 4))]);
        assert_eq!(
            plan.reactions_added,
            vec![(t, batch[0].sender_id, "🎉".to_owned())]
        );
        assert!(
            plan.reactions_removed.is_empty(),
            "taken back, then added again"
        );
    }
}
