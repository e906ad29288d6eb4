//! What makes a message body storable, checked the same way wherever a body comes from:
//! a person's send, an auto-reply's text, a script's reply, forward or rewrite.

/// Why a body cannot be stored. Each caller maps it to its own stable error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Nothing to send.
    #[error("body must not be empty")]
    Empty,
    /// A NUL character: PostgreSQL cannot store it in text, and one such message would
    /// stall the store stage of a cluster.
    #[error("body must not contain NUL characters")]
    Nul,
    /// Over the configured limit (`limits.max_body_bytes`).
    #[error("body is {len} bytes; the limit is {max}")]
    TooLarge {
        /// The body's length, bytes.
        len: usize,
        /// The limit, bytes.
        max: usize,
    },
}

/// Checks that `body` can be stored: 1 to `max_bytes` bytes, without NUL. The checks
/// run in this order (emptiness, NUL, size), so a body that breaks several rules gets
/// the same error, and the same code, wherever it is checked.
pub fn check_body(body: &str, max_bytes: usize) -> Result<(), BodyError> {
    if body.is_empty() {
        return Err(BodyError::Empty);
    }
    if body.contains('\0') {
        return Err(BodyError::Nul);
    }
    if body.len() > max_bytes {
        return Err(BodyError::TooLarge {
            len: body.len(),
            max: max_bytes,
        });
    }
    Ok(())
}

/// Checks the body of a message carrying `attachments` files: as [`check_body`], but
/// a message with at least one attachment may have an empty body.
pub fn check_message_body(
    body: &str,
    attachments: usize,
    max_bytes: usize,
) -> Result<(), BodyError> {
    if body.is_empty() && attachments > 0 {
        return Ok(());
    }
    check_body(body, max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_message_with_attachments_may_have_an_empty_body() {
        assert_eq!(check_message_body("", 1, 2), Ok(()));
        assert_eq!(check_message_body("", 0, 2), Err(BodyError::Empty));
        assert_eq!(
            check_message_body("abc", 1, 2),
            Err(BodyError::TooLarge { len: 3, max: 2 })
        );
    }

    #[test]
    fn a_body_is_one_to_max_bytes_without_nul() {
        assert_eq!(check_body("hi", 2), Ok(()));
        assert_eq!(check_body("", 2), Err(BodyError::Empty));
        assert_eq!(check_body("a\0", 2), Err(BodyError::Nul));
        assert_eq!(
            check_body("abc", 2),
            Err(BodyError::TooLarge { len: 3, max: 2 })
        );
    }

    #[test]
    fn nul_is_reported_before_size() {
        assert_eq!(check_body("abc\0", 2), Err(BodyError::Nul));
    }
}
