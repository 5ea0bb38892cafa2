//! Which channels keep history: `PGWS_HISTORY`'s comma-separated patterns.

use std::fmt;

/// The channels whose messages are kept, as patterns where `*` matches any run
/// of characters (none included): `chat,orders.*` keeps `chat`, `orders.` and
/// `orders.eu`, not `chats`. Nothing else is special: there is no escape, so a
/// `*` in a pattern always is a wildcard. An empty set keeps nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryChannels {
    patterns: Vec<Pattern>,
}

/// A pattern split at its `*`s: `a*b*c` is `["a", "b", "c"]`, `chat` is `["chat"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    parts: Vec<String>,
}

/// A `PGWS_HISTORY` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PatternError {
    /// An item between commas is empty (`chat,,orders` or a trailing comma).
    Empty,
    /// A pattern holds NUL, or needs more than 63 bytes besides its `*`s, so
    /// that it matches no channel.
    MatchesNothing(String),
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty channel pattern"),
            Self::MatchesNothing(p) => write!(
                f,
                "channel pattern {p:?} matches no channel (1 to 63 bytes without NUL)"
            ),
        }
    }
}

impl std::error::Error for PatternError {}

impl HistoryChannels {
    /// Parses comma-separated patterns; spaces around each are ignored. An empty
    /// or blank text is the empty set.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let patterns = text
            .split(',')
            .map(|item| Pattern::parse(item.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether `channel` keeps history.
    pub fn matches(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(channel))
    }

    /// Whether no channel keeps history.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

impl fmt::Display for HistoryChannels {
    /// The patterns, comma-separated: `parse` reads them back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&p.parts.join("*"))?;
        }
        Ok(())
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let parts: Vec<String> = text.split('*').map(str::to_owned).collect();
        let fixed: usize = parts.iter().map(String::len).sum();
        if fixed > 63 || text.contains('\0') {
            return Err(PatternError::MatchesNothing(text.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Star-only globbing: the first part is a prefix, the last a suffix, and the
    /// middle ones occur in order in between. Taking each middle part at its
    /// leftmost place is enough, so this is linear, whatever the pattern.
    fn matches(&self, channel: &str) -> bool {
        let (first, rest) = self.parts.split_first().expect("split yields one part");
        let Some((last, middle)) = rest.split_last() else {
            return channel == first;
        };
        if channel.len() < first.len() + last.len()
            || !channel.starts_with(first.as_str())
            || !channel.ends_with(last.as_str())
        {
            return false;
        }
        // Both ends are char boundaries: the prefix and suffix matched whole chars.
        let mut between = &channel[first.len()..channel.len() - last.len()];
        for part in middle {
            match between.find(part.as_str()) {
                Some(at) => between = &between[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> HistoryChannels {
        HistoryChannels::parse(text).unwrap()
    }

    #[test]
    fn exact_names_and_prefixes() {
        let h = set("chat,orders.*");
        for yes in ["chat", "orders.", "orders.eu", "orders.*"] {
            assert!(h.matches(yes), "{yes}");
        }
        for no in ["chats", "Chat", "chat ", "orders", "xorders.eu", ""] {
            assert!(!h.matches(no), "{no}");
        }
    }

    #[test]
    fn stars_anywhere() {
        let h = set("*");
        assert!(h.matches("anything") && h.matches(""));
        let h = set("*.log");
        assert!(h.matches("a.log") && h.matches(".log") && !h.matches("a.log2"));
        let h = set("a*b*c");
        for yes in ["abc", "aXbYc", "abbc", "acbc", "abcbc", "a*b*c"] {
            assert!(h.matches(yes), "{yes}");
        }
        for no in ["ab", "ac", "acb", "bc", "abcx", "xabc"] {
            assert!(!h.matches(no), "{no}");
        }
        // A prefix and suffix that would overlap do not match.
        let h = set("ab*ba");
        assert!(!h.matches("aba") && h.matches("abba") && h.matches("ab-ba"));
        assert!(set("**").matches("x") && set("a**b").matches("ab"));
    }

    #[test]
    fn unicode_and_hostile_names() {
        let h = set("日本*,é*é, a b ,'q\"*");
        for yes in ["日本", "日本語", "éé", "été", "a b", "'q\"x"] {
            assert!(h.matches(yes), "{yes}");
        }
        for no in ["日", "é", " a b ", "a  b"] {
            assert!(!h.matches(no), "{no}");
        }
        // Many stars against a long name stay linear.
        let h = set(&"*a".repeat(30));
        assert!(!h.matches(&"a".repeat(29)));
        assert!(h.matches(&"a".repeat(63)));
    }

    #[test]
    fn blank_is_empty_and_bad_items_are_refused() {
        assert!(set("").is_empty() && set("  ").is_empty());
        assert!(!set("").matches("chat"));
        assert_eq!(HistoryChannels::parse("a,,b"), Err(PatternError::Empty));
        assert_eq!(HistoryChannels::parse("a, "), Err(PatternError::Empty));
        assert_eq!(HistoryChannels::parse(","), Err(PatternError::Empty));
        let long = "x".repeat(64);
        assert_eq!(
            HistoryChannels::parse(&long),
            Err(PatternError::MatchesNothing(long.clone()))
        );
        assert!(HistoryChannels::parse(&format!("{}*", "x".repeat(63))).is_ok());
        assert!(matches!(
            HistoryChannels::parse("a\0*"),
            Err(PatternError::MatchesNothing(_))
        ));
        assert!(PatternError::Empty.to_string().contains("empty"));
    }

    #[test]
    fn display_reads_back() {
        let h = set(" chat , orders.* ,*x*");
        assert_eq!(h.to_string(), "chat,orders.*,*x*");
        assert_eq!(set(&h.to_string()), h);
    }
}
