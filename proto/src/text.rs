//! Text that came from agents (hostnames, facts, outputs, messages), made safe for whoever
//! reads it: a terminal (the CLI's tables) or a chat window (webhook notifications).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Makes text that came from agents safe for a terminal or a chat window:
/// control characters other than newline and tab, and the bidirectional overrides that can
/// disguise text, are shown escaped (`\u{1b}`), so nothing an agent sends can move the cursor,
/// clear the screen, retitle the window or hide what it says. JSON needs none of this.
pub fn clean(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_from_agents_never_reach_the_terminal() {
        assert_eq!(clean("web-1: ok\n\tdone"), "web-1: ok\n\tdone");
        let hostile = "evil\u{1b}]0;owned\u{7}\u{1b}[2J\u{202e}txt.exe";
        let shown = clean(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(!shown.contains('\u{202e}'));
        assert_eq!(shown, "evil\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{202e}txt.exe");
    }
}
