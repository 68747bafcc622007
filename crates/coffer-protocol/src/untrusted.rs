//! Text that came from the other side — a request's user name on the
//! server, a server's error message on the device — on its way into a log
//! line, the audit trail or a terminal.
//!
//! Two rules, in one place for both ends: such a string is *data*, never a
//! line of its own — every control character (newline, carriage return,
//! ANSI escape), and every Unicode character that can reorder or hide text
//! (bidirectional overrides and isolates, zero-width characters, line
//! separators), is written as an escape (`\u{a}`), and so is a backslash,
//! so that an escape cannot be faked — and what is kept of it is bounded,
//! so that a refused request of 60,000 characters leaves a few dozen bytes
//! behind, not 60,000.
//!
//! ```
//! use coffer_protocol::untrusted::Untrusted;
//!
//! let name = "bob\nINFO login user=alice";
//! assert_eq!(Untrusted::new(name).to_string(), "bob\\u{a}INFO login user=alice");
//! assert_eq!(Untrusted::new(&"x".repeat(100)).at_most(3).to_string(), "xxx…(+97 bytes)");
//! ```

use std::fmt;

/// Most characters of an outside string kept by default; the rest is
/// counted, not kept.
pub const KEPT_CHARS: usize = 64;

/// An outside string as it may be shown or recorded: escaped, and cut to
/// [`KEPT_CHARS`] characters (or [`Untrusted::at_most`]) with a count of
/// the bytes left out (`tracing::info!(user = %Untrusted::new(&name))`).
#[derive(Clone, Copy)]
pub struct Untrusted<'a> {
    text: &'a str,
    max: usize,
}

impl<'a> Untrusted<'a> {
    /// `text`, to keep at most [`KEPT_CHARS`] characters of.
    pub fn new(text: &'a str) -> Self {
        Untrusted {
            text,
            max: KEPT_CHARS,
        }
    }

    /// Keeps at most `max` characters instead.
    pub fn at_most(self, max: usize) -> Self {
        Untrusted { max, ..self }
    }
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kept, (at, c)) in self.text.char_indices().enumerate() {
            if kept == self.max {
                return write!(f, "…(+{} bytes)", self.text.len() - at);
            }
            if c == '\\' {
                f.write_str("\\\\")?;
            } else if hides_or_breaks(c) {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// An outside string as a record keeps it (the server's audit trail, which
/// is hash-chained and cannot be pruned): escaped and bounded like a log
/// line.
pub fn recorded(text: &str) -> String {
    Untrusted::new(text).to_string()
}

/// Characters that end a line, move the cursor, change colours or reorder
/// or hide what a reader sees.
fn hides_or_breaks(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_never_written() {
        let forged = "bob\n2026-01-01T00:00:00Z  INFO login user=alice\x1b[2J\r";
        let shown = Untrusted::new(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(
            shown,
            "bob\\u{a}2026-01-01T00:00:00Z  INFO login user=alice\\u{1b}[2J\\u{d}"
        );
        // A backslash is escaped too, so an escape cannot be faked.
        assert_eq!(Untrusted::new("a\\u{a}").to_string(), "a\\\\u{a}");
        // Bidirectional overrides and zero-width characters hide text.
        assert_eq!(
            Untrusted::new("ad\u{202e}nimda\u{200b}").to_string(),
            "ad\\u{202e}nimda\\u{200b}"
        );
        assert_eq!(Untrusted::new("émilie").to_string(), "émilie");
    }

    #[test]
    fn long_strings_are_cut_and_counted() {
        let long = "x".repeat(60_000);
        let shown = recorded(&long);
        assert_eq!(
            shown,
            format!("{}…(+{} bytes)", "x".repeat(64), 60_000 - 64)
        );
        assert!(shown.len() < 100);
        assert_eq!(recorded(&"y".repeat(KEPT_CHARS)), "y".repeat(KEPT_CHARS));
        // Multi-byte characters are cut on a character boundary.
        let wide = "é".repeat(100);
        assert_eq!(recorded(&wide), format!("{}…(+72 bytes)", "é".repeat(64)));
        assert_eq!(Untrusted::new("abc").at_most(0).to_string(), "…(+3 bytes)");
    }
}
