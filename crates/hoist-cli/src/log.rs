//! Log lines that text from outside cannot forge, and colour only where a
//! person reads it.

use std::io::{IsTerminal, Write};

/// Colour on stderr only when it is a terminal, `NO_COLOR` is unset or
/// empty (no-color.org), and `TERM` is not `dumb`.
pub fn colour_on_stderr() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
    std::io::stderr().is_terminal() && !no_color && !dumb
}

/// Stderr, one event at a time: the event's text is held until it is
/// whole, then every control character in it but the final newline is
/// escaped (with colour on, the formatter's own `ESC[…m` codes are kept).
/// A registry's message, a name or a header value inside a log line can
/// therefore never start a line of its own, whatever logged it.
pub struct SafeStderr;

pub struct EventBuf {
    buf: Vec<u8>,
    colour: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for SafeStderr {
    type Writer = EventBuf;
    fn make_writer(&'a self) -> EventBuf {
        EventBuf {
            buf: Vec::with_capacity(256),
            colour: colour_on_stderr(),
        }
    }
}

impl Write for EventBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventBuf {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let mut line = if self.colour {
            escape_keeping_sgr(body)
        } else {
            hoist::escape_controls(body).into_owned()
        };
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Escape controls, but keep colour codes (`ESC [ digits/; m`) intact.
fn escape_keeping_sgr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\u{1b}') {
        out.push_str(&hoist::escape_controls(&rest[..i]));
        let after = &rest[i + 1..];
        let sgr = after.strip_prefix('[').and_then(|a| {
            let end = a.find(|c: char| !(c.is_ascii_digit() || c == ';'))?;
            (a[end..].starts_with('m')).then_some(end + 2)
        });
        match sgr {
            Some(n) => {
                out.push('\u{1b}');
                out.push_str(&after[..n]);
                rest = &after[n..];
            }
            None => {
                out.push_str("\\u{1b}");
                rest = after;
            }
        }
    }
    out.push_str(&hoist::escape_controls(rest));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_codes_survive_and_forged_escapes_do_not() {
        let s = "\u{1b}[2mtime\u{1b}[0m \u{1b}[32mINFO\u{1b}[0m evil\n\u{1b}]0;title\u{7}";
        let e = super::escape_keeping_sgr(s);
        assert!(e.starts_with("\u{1b}[2mtime\u{1b}[0m \u{1b}[32mINFO\u{1b}[0m evil\\n"));
        assert!(e.ends_with("\\u{1b}]0;title\\u{7}"), "{e}");
    }
}
