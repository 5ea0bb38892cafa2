//! A handshake's `since=` and `history=` query values (PROTOCOL.md §15), checked
//! against the socket's grant.

use crate::{
    engine::{history::History, resume::Start},
    history::{HistoryChannels, Since},
    refusal::Refusal,
};

/// What a handshake's query asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Asked {
    since: Vec<Since>,
    history: Option<i64>,
}

/// Reads `since=` (repeatable) and `history=` from a query string; other
/// parameters are left alone. `Ok(None)` when it asks for neither.
pub(crate) fn parse(query: Option<&str>) -> Result<Option<Asked>, Refusal> {
    let mut asked = Asked::default();
    let mut any = false;
    for pair in query.unwrap_or_default().split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "since" => {
                let since =
                    Since::parse(value).map_err(|e| Refusal::InvalidPosition(e.to_string()))?;
                asked.since.push(since);
            }
            "history" => {
                if asked.history.is_some() {
                    return Err(invalid("history is given more than once"));
                }
                let n = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| invalid("history is a number of messages from 0"))?;
                asked.history = Some(n);
            }
            _ => continue,
        }
        any = true;
    }
    Ok(any.then_some(asked))
}

/// An event stream's positions: the query's, with `Last-Event-ID` (`since`
/// values joined by `,`, as the stream's event ids are written) in place of its
/// `since=`; every history channel without a position starts at the head
/// (`history=0`), so that the stream's ids cover all of them.
pub(crate) fn for_stream(
    query: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<Asked, Refusal> {
    let mut asked = parse(query)?.unwrap_or_default();
    if let Some(id) = last_event_id.map(str::trim).filter(|id| !id.is_empty()) {
        asked.since = id
            .split(',')
            .map(|value| Since::parse(value).map_err(|e| Refusal::InvalidPosition(e.to_string())))
            .collect::<Result<_, _>>()?;
    }
    asked.history.get_or_insert(0);
    Ok(asked)
}

/// The starts with every `history=n` made a window after the channel's head,
/// read now, before subscribing: what is committed after the subscription is
/// then replayed or queued.
pub(crate) async fn windows(
    history: &History,
    mut starts: Vec<(String, Start)>,
) -> Result<Vec<(String, Start)>, Refusal> {
    for (channel, start) in &mut starts {
        if let Start::Last(n) = *start {
            let head = history.head(channel).await.map_err(|e| {
                tracing::warn!(error = %e, "history head not read");
                Refusal::DatabaseUnavailable
            })?;
            *start = Start::window(head, n);
        }
    }
    Ok(starts)
}

fn invalid(why: &str) -> Refusal {
    Refusal::InvalidPosition(format!("Invalid position: {why}"))
}

impl Asked {
    /// Where each granted history channel's replay starts, in the grant's order.
    /// A position for a channel the token does not grant is refused like the
    /// channel (403); one for a channel that keeps no history, a second one for a
    /// channel, or one without a channel on a socket with several, is a 400.
    pub(crate) fn starts(
        self,
        granted: &[String],
        history: &HistoryChannels,
    ) -> Result<Vec<(String, Start)>, Refusal> {
        let mut positions: Vec<(String, Start)> = Vec::new();
        for since in self.since {
            let channel = match since.channel {
                Some(channel) => channel,
                None => match granted {
                    [one] => one.clone(),
                    _ => {
                        return Err(invalid(
                            "a since without a channel needs a socket with one channel",
                        ));
                    }
                },
            };
            if !granted.contains(&channel) {
                return Err(Refusal::PositionNotAllowed);
            }
            if !history.matches(&channel) {
                return Err(invalid("since names a channel that keeps no history"));
            }
            if positions.iter().any(|(c, _)| *c == channel) {
                return Err(invalid("since is given twice for one channel"));
            }
            positions.push((channel, Start::After(since.position)));
        }
        let mut starts = Vec::new();
        for channel in granted {
            if let Some(i) = positions.iter().position(|(c, _)| c == channel) {
                starts.push(positions.swap_remove(i));
            } else if let Some(n) = self.history
                && history.matches(channel)
            {
                starts.push((channel.clone(), Start::Last(n)));
            }
        }
        Ok(starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Position;

    fn at(epoch: &str, offset: i64) -> Start {
        Start::After(Position::new(epoch, offset).unwrap())
    }

    fn granted(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn a_last_event_id_stands_for_the_since_values_and_history_defaults_to_0() {
        let patterns = HistoryChannels::parse("h*").unwrap();
        let asked = for_stream(Some("since=E:1:ha&history=4"), Some("E:7:ha,F:2:h%2Cb")).unwrap();
        assert_eq!(
            asked
                .starts(&granted(&["ha", "h,b", "hc"]), &patterns)
                .unwrap(),
            vec![
                ("ha".to_owned(), at("E", 7)),
                ("h,b".to_owned(), at("F", 2)),
                ("hc".to_owned(), Start::Last(4)),
            ]
        );
        let asked = for_stream(None, Some(" ")).unwrap();
        assert_eq!(
            asked.starts(&granted(&["ha"]), &patterns).unwrap(),
            vec![("ha".to_owned(), Start::Last(0))]
        );
        let refusal = for_stream(None, Some("E:1,nonsense")).unwrap_err();
        assert_eq!(refusal.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn nothing_asked_is_none_and_other_parameters_are_ignored() {
        assert_eq!(parse(None), Ok(None));
        assert_eq!(parse(Some("a=1&b")), Ok(None));
    }

    #[test]
    fn malformed_values_are_refused_with_a_400() {
        for q in [
            "since=abc",
            "since=E:x",
            "since=E%:1",
            "history=-1",
            "history=x",
            "history=1&history=2",
        ] {
            let refusal = parse(Some(q)).unwrap_err();
            assert_eq!(refusal.status(), http::StatusCode::BAD_REQUEST, "{q}");
            assert!(refusal.to_string().starts_with("Invalid position"), "{q}");
        }
    }

    #[test]
    fn positions_go_to_their_channels_and_history_to_the_others() {
        let patterns = HistoryChannels::parse("h*").unwrap();
        let asked = parse(Some("history=5&since=E:3:h%20b")).unwrap().unwrap();
        let starts = asked
            .starts(&granted(&["plain", "ha", "h b"]), &patterns)
            .unwrap();
        assert_eq!(
            starts,
            vec![
                ("ha".to_owned(), Start::Last(5)),
                ("h b".to_owned(), at("E", 3))
            ]
        );
        let single = parse(Some("since=E:7")).unwrap().unwrap();
        assert_eq!(
            single.starts(&granted(&["ha"]), &patterns).unwrap(),
            vec![("ha".to_owned(), at("E", 7))]
        );
    }

    #[test]
    fn positions_that_do_not_fit_the_socket_are_refused() {
        let patterns = HistoryChannels::parse("h*").unwrap();
        let check = |q: &str, channels: &[&str]| {
            let asked = parse(Some(q)).unwrap().unwrap();
            asked.starts(&granted(channels), &patterns).unwrap_err()
        };
        assert_eq!(check("since=E:1:hx", &["ha"]), Refusal::PositionNotAllowed);
        assert_eq!(
            check("since=E:1:hx", &["ha"]).status(),
            http::StatusCode::FORBIDDEN
        );
        for (q, channels) in [
            ("since=E:1", &["ha", "hb"][..]),
            ("since=E:1:plain", &["plain"][..]),
            ("since=E:1:ha&since=E:2:ha", &["ha"][..]),
        ] {
            assert_eq!(
                check(q, channels).status(),
                http::StatusCode::BAD_REQUEST,
                "{q}"
            );
        }
    }
}
