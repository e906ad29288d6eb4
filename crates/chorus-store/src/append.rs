//! What [`crate::Store::append_messages`] stores, decided without the database: each
//! backend reads what the batch needs (the messages already stored among it and the
//! `last_seq` of its conversations), asks [`plan`], then writes what it returns.

use crate::{Appended, NewMessage, Result, from_millis, millis};
use chorus_core::model::Message;
use chorus_core::{ConversationId, MessageId};
use std::collections::{BTreeMap, HashMap};

/// What to write for a batch.
#[derive(Debug)]
pub(crate) struct AppendPlan {
    /// What became of each message of the batch, in batch order; the [`Appended::New`]
    /// ones are the rows to insert.
    pub appended: Vec<Appended>,
    /// The new `last_seq` of each conversation the batch added to, by conversation id.
    pub last_seqs: Vec<(ConversationId, i64)>,
}

impl AppendPlan {
    /// The messages to insert, in batch order.
    pub(crate) fn new_messages(&self) -> Vec<&Message> {
        self.appended.iter().filter_map(Appended::as_new).collect()
    }
}

/// The conversations of `batch`, each once, in id order (the order to lock them in).
pub(crate) fn conversations(batch: &[NewMessage]) -> Vec<ConversationId> {
    let mut ids: Vec<ConversationId> = batch.iter().map(|m| m.conversation_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Numbers the messages of `batch`, in batch order, after their conversation's
/// `last_seq` (1, 2, 3, … with no gaps), given the messages of the batch that are
/// `stored` already (by id) and the `last_seq` of each of its conversations that
/// exists. A message stored before, or earlier in this batch, is not stored again: the
/// stored copy is returned. Times are kept to the millisecond, as stored.
pub(crate) fn plan(
    batch: &[NewMessage],
    mut stored: HashMap<MessageId, Message>,
    mut last_seq: HashMap<ConversationId, i64>,
) -> Result<AppendPlan> {
    let mut appended = Vec::with_capacity(batch.len());
    let mut advanced: BTreeMap<ConversationId, i64> = BTreeMap::new();
    for m in batch {
        if let Some(existing) = stored.get(&m.message_id) {
            appended.push(Appended::Existing(existing.clone()));
            continue;
        }
        let Some(last) = last_seq.get_mut(&m.conversation_id) else {
            appended.push(Appended::NoConversation);
            continue;
        };
        *last += 1;
        advanced.insert(m.conversation_id, *last);
        let message = Message {
            message_id: m.message_id,
            client_msg_id: m.client_msg_id.clone(),
            conversation_id: m.conversation_id,
            seq: *last,
            sender_id: m.sender_id,
            body: m.body.clone(),
            sent_at: from_millis(millis(m.sent_at))?,
            origin: m.origin,
            attachments: m.attachments.clone(),
            reply_to: m.reply_to,
            mentions: m.mentions.clone(),
        };
        stored.insert(m.message_id, message.clone());
        appended.push(Appended::New(message));
    }
    Ok(AppendPlan {
        appended,
        last_seqs: advanced.into_iter().collect(),
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
        NewMessage {
            mentions: Vec::new(),
            reply_to: None,
            attachments: Vec::new(),
            message_id: MessageId::derive(sender, conversation, key),
            client_msg_id: key.to_owned(),
            conversation_id: conversation,
            sender_id: sender,
            body: format!("body {key}"),
            sent_at: Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap(),
            origin: Origin::User,
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
        let plan = plan(&batch, HashMap::new(), HashMap::from([(c, 4)])).unwrap();
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
        let plan = plan(&batch, HashMap::new(), HashMap::from([(c, 0)])).unwrap();
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
        let stored = Message {
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
        };
        let plan = plan(
            &batch,
            HashMap::from([(stored.message_id, stored)]),
            HashMap::from([(c, 3)]),
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
        let plan = plan(&batch, HashMap::new(), HashMap::from([(known, 0)])).unwrap();
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
        let plan = plan(&batch, HashMap::new(), HashMap::from([(a, 10), (b, 0)])).unwrap();
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
        let plan = plan(&batch, HashMap::new(), HashMap::new()).unwrap();
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
}
