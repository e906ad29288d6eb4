//! What a hook may answer: nothing, one action, or an array of actions.

use chorus_core::ConversationId;
use chorus_core::model::Hook;
use serde::Serialize;
use serde_json::Value;

/// Actions one run may return.
pub(crate) const MAX_ACTIONS: usize = 10;

/// One thing a hook asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Send a message as the owner in the same conversation.
    Reply(String),
    /// Outgoing only: replace the body before it is stored.
    Rewrite(String),
    /// Outgoing: block the message; incoming: do not deliver it to the owner.
    Drop(String),
    /// Copy the body to another conversation of the owner's.
    Forward(ConversationId),
}

/// Reads a hook's return value into actions, or says what is wrong with it.
pub fn parse_actions(hook: Hook, value: Value) -> Result<Vec<Action>, String> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => vec![other],
    };
    if items.len() > MAX_ACTIONS {
        return Err(format!(
            "{} actions returned; at most {MAX_ACTIONS} are allowed",
            items.len()
        ));
    }
    items
        .into_iter()
        .filter(|v| !v.is_null())
        .map(|v| parse_action(hook, v))
        .collect()
}

fn parse_action(hook: Hook, value: Value) -> Result<Action, String> {
    let Value::Object(map) = value else {
        return Err(format!(
            "an action must be an object such as {{reply: \"text\"}}, not {value}"
        ));
    };
    if map.len() != 1 {
        return Err(format!(
            "an action has exactly one of reply, rewrite, drop, forward; got {}",
            Value::Object(map)
        ));
    }
    let Some((kind, arg)) = map.into_iter().next() else {
        return Err("empty action".into());
    };
    let text = |arg: Value| match arg {
        Value::String(s) if !s.is_empty() => Ok(s),
        other => Err(format!("`{kind}` needs a non-empty string, not {other}")),
    };
    match kind.as_str() {
        "reply" => text(arg).map(Action::Reply),
        "rewrite" if hook == Hook::Outgoing => text(arg).map(Action::Rewrite),
        "rewrite" => Err("`rewrite` is for onOutgoing only".into()),
        "drop" => Ok(Action::Drop(match arg {
            Value::String(s) if !s.is_empty() => s,
            _ => "dropped by a script".into(),
        })),
        "forward" => match &arg {
            Value::String(s) => s
                .parse()
                .map(Action::Forward)
                .map_err(|_| format!("`forward` needs a conversation id, not {arg}")),
            _ => Err(format!("`forward` needs a conversation id, not {arg}")),
        },
        other => Err(format!(
            "unknown action `{other}` (known: reply, rewrite, drop, forward)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nothing_one_or_many() {
        assert_eq!(parse_actions(Hook::Incoming, Value::Null), Ok(vec![]));
        assert_eq!(
            parse_actions(Hook::Incoming, json!({"reply": "hi"})),
            Ok(vec![Action::Reply("hi".into())])
        );
        let c = ConversationId::new();
        assert_eq!(
            parse_actions(
                Hook::Outgoing,
                json!([{"rewrite": "x"}, null, {"forward": c.to_string()}, {"drop": true}])
            ),
            Ok(vec![
                Action::Rewrite("x".into()),
                Action::Forward(c),
                Action::Drop("dropped by a script".into())
            ])
        );
    }

    #[test]
    fn bad_actions_say_why() {
        let err = |hook, v| parse_actions(hook, v).unwrap_err();
        assert!(err(Hook::Incoming, json!({"rewrite": "x"})).contains("onOutgoing only"));
        assert!(err(Hook::Incoming, json!({"reply": ""})).contains("non-empty string"));
        assert!(err(Hook::Incoming, json!({"reply": "a", "drop": "b"})).contains("exactly one"));
        assert!(err(Hook::Incoming, json!({"explode": 1})).contains("unknown action"));
        assert!(err(Hook::Incoming, json!({"forward": "nope"})).contains("conversation id"));
        assert!(err(Hook::Incoming, json!(42)).contains("must be an object"));
        assert!(err(Hook::Incoming, json!(vec![json!({"drop": "x"}); 11])).contains("at most"));
    }
}
