//! `@username` tokens in a message's body: who it may mention. The server decides who
//! it does mention (members only, see the store stage).

/// Whether `c` may be part of a username (`A-Z a-z 0-9 _ . -`).
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The names `body` may mention, in order of first appearance, each once: every
/// `@name` not preceded by a name character (so `a@b.c` names nobody), and, for a name
/// ending in `.`, `-` or `_` (the end of a sentence: "thanks @ada."), the name without
/// them too.
pub fn named(body: &str) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    let mut previous: Option<char> = None;
    for (i, c) in body.char_indices() {
        if c == '@' && !previous.is_some_and(name_char) {
            let rest = &body[i + 1..];
            let end = rest.find(|c: char| !name_char(c)).unwrap_or(rest.len());
            let name = &rest[..end];
            let trimmed = name.trim_end_matches(['.', '-', '_']);
            for candidate in [name, trimmed] {
                if (3..=32).contains(&candidate.len()) && !names.contains(&candidate) {
                    names.push(candidate);
                }
            }
        }
        previous = Some(c);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::named;

    #[test]
    fn names_are_found_in_order_once_each() {
        assert_eq!(named("@bob and @ada, then @bob again"), ["bob", "ada"]);
        assert_eq!(named("no one here"), Vec::<&str>::new());
        assert_eq!(named("(@carol) @dave!"), ["carol", "dave"]);
    }

    #[test]
    fn a_sentence_ending_after_a_name_also_tries_the_name_without_it() {
        assert_eq!(named("thanks @ada."), ["ada.", "ada"]);
        assert_eq!(named("@j.doe-"), ["j.doe-", "j.doe"]);
    }

    #[test]
    fn addresses_and_short_or_long_names_name_nobody() {
        assert_eq!(named("mail a@bob.com"), Vec::<&str>::new());
        assert_eq!(named("@ab @"), Vec::<&str>::new());
        assert_eq!(named(&format!("@{}", "x".repeat(33))), Vec::<&str>::new());
        assert_eq!(
            named("@bob@ada"),
            ["bob"],
            "the second @ follows a name character"
        );
    }
}
