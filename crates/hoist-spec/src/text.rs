//! Text that came from outside (a registry's error message, a name, a
//! header value) on its way to a log line, a record or an error message:
//! control characters are escaped, so it can never start a new line,
//! move the cursor or recolour a terminal.

use std::borrow::Cow;

/// Whether `c` must not reach a log line as it is: C0 and C1 controls,
/// DEL, and the bidirectional overrides that reorder what a reader sees.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character written as an escape (`\n`, `\r`,
/// `\t`, `\u{1b}`); unchanged, and not copied, when it holds none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn a_forged_log_line_stays_on_one_line() {
        let evil = "denied\n2026-01-01T00:00:00Z  INFO fake line\r\u{1b}[31mred\u{202e}";
        let e = escape_controls(evil);
        assert!(!e.chars().any(|c| c.is_control()), "{e}");
        assert_eq!(
            e,
            "denied\\n2026-01-01T00:00:00Z  INFO fake line\\r\\u{1b}[31mred\\u{202e}"
        );
        assert!(matches!(
            escape_controls("plain ü"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
