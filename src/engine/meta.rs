//! Meta events (`ConnectionOpen`, `ConnectionClose`): one task per layer publishes
//! them in the order sockets queue them, many per statement, on at most one pool
//! connection, so they can neither overtake each other nor crowd out client writes.
//!
//! Meta events are best effort. The queue holds [`QUEUE`] events; a socket whose
//! event finds it full drops that event, and a batch the database refuses is lost.
//! Both count in `meta_failures`.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    auth::Grant,
    envelope::Event,
    mapping::{Mapping, Notify},
    stats::Counters,
};

use super::publisher::Publisher;

/// Events waiting to be published, at most.
pub(crate) const QUEUE: usize = 8192;
/// How long a socket waits for its event: its first message for its
/// `ConnectionOpen`, its end for its `ConnectionClose`.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
/// Events published in one statement, at most.
const BATCH: usize = 128;

/// One queued event, and who waits for it to be published (or lost).
struct Queued {
    notify: Notify,
    done: oneshot::Sender<()>,
}

/// The sockets' side of the meta task.
pub(crate) struct Meta {
    /// The meta channel.
    pub(crate) channel: String,
    claims: MetaClaims,
    queue: mpsc::Sender<Queued>,
    counters: Arc<Counters>,
}

/// Which claims of a reader's token its events carry (`meta_claims`): every
/// reader of the meta channel sees them, so none unless named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetaClaims {
    All,
    /// These only; none when empty.
    Named(Vec<String>),
}

impl MetaClaims {
    /// `*` for every claim, else comma-separated names; unset or empty, none.
    pub(crate) fn parse(setting: Option<&str>) -> Self {
        let names: Vec<String> = setting
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.iter().any(|n| n == "*") {
            MetaClaims::All
        } else {
            MetaClaims::Named(names)
        }
    }
}

impl Meta {
    /// Starts the layer's meta task; it ends with the last socket.
    pub(crate) fn spawn(
        channel: String,
        claims: MetaClaims,
        publisher: Publisher,
        counters: Arc<Counters>,
    ) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, publisher, counters.clone()));
        Self {
            channel,
            claims,
            queue,
            counters,
        }
    }

    /// Queues `event` of a reader (socket or event stream) with `grant`: its
    /// payload is the granted channels, joined with commas, and its claims those
    /// of [`MetaClaims`]. As [`send`](Self::send).
    pub(crate) fn announce(
        &self,
        mapping: &Mapping,
        grant: &Grant,
        event: Event,
    ) -> Option<oneshot::Receiver<()>> {
        let channels = grant.channels.join(",");
        let only;
        let claims = match &self.claims {
            MetaClaims::All => &grant.claims,
            MetaClaims::Named(names) => {
                only = grant.claims.only(names);
                &only
            }
        };
        let notify = mapping
            .notifies(
                std::slice::from_ref(&self.channel),
                event,
                &channels,
                claims,
                SystemTime::now(),
            )
            .pop()?;
        self.send(notify)
    }

    /// Queues an event. The receiver resolves once it was published or lost;
    /// `None` when the queue was full and the event was dropped (and counted).
    pub(crate) fn send(&self, notify: Notify) -> Option<oneshot::Receiver<()>> {
        let (done, published) = oneshot::channel();
        match self.queue.try_send(Queued { notify, done }) {
            Ok(()) => Some(published),
            Err(_) => {
                self.counters.meta_failed();
                tracing::debug!("meta queue full; event dropped");
                None
            }
        }
    }
}

/// Publishes queued events, a batch at a time, until every sender is gone.
async fn run(mut rx: mpsc::Receiver<Queued>, publisher: Publisher, counters: Arc<Counters>) {
    let mut carried = None;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = match carried.take() {
            Some(event) => event,
            None => match rx.recv().await {
                Some(event) => event,
                None => return,
            },
        };
        batch.push(first);
        while batch.len() < BATCH {
            let Ok(event) = rx.try_recv() else { break };
            // PostgreSQL folds identical notifications of one transaction into one:
            // a repeat (two like sockets) waits for the next statement.
            if batch.iter().any(|q: &Queued| q.notify == event.notify) {
                carried = Some(event);
                break;
            }
            batch.push(event);
        }
        let (notifies, done): (Vec<Notify>, Vec<_>) =
            batch.drain(..).map(|q| (q.notify, q.done)).unzip();
        if let Err(e) = publisher.publish(&notifies).await {
            for _ in &notifies {
                counters.meta_failed();
            }
            tracing::warn!(error = %e.0, events = notifies.len(), "meta events not published");
        }
        for done in done {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MetaClaims;

    #[test]
    fn meta_claims_are_none_unless_named() {
        assert_eq!(MetaClaims::parse(None), MetaClaims::Named(Vec::new()));
        assert_eq!(
            MetaClaims::parse(Some(" , ")),
            MetaClaims::Named(Vec::new())
        );
        assert_eq!(MetaClaims::parse(Some("*")), MetaClaims::All);
        assert_eq!(MetaClaims::parse(Some("sub, *")), MetaClaims::All);
        assert_eq!(
            MetaClaims::parse(Some(" sub,name ,")),
            MetaClaims::Named(vec!["sub".into(), "name".into()])
        );
    }
}
