//! What was committed, what each connection got, and the check of one against
//! the other (PROTOCOL.md §11 and §15): every message of a connection's channels
//! committed after its `101` arrives once, in commit order, and nothing else does;
//! a missing suffix only behind a close code that says so.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Instant,
};

use serde_json::Value;

use super::plan::{Behaviour, Fault, Plan};

/// One message of a commit: its id and channel (an index into the plan's).
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub channel: usize,
}

#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Committed for certain, at the latest by then.
    Committed(Instant),
    /// An error left it open whether it committed.
    Unknown,
    /// Refused with an `error` answer: nothing of it may reach anyone.
    Failed,
}

/// One transaction (or one socket's run of messages), from one source.
#[derive(Debug, Clone)]
pub struct Commit {
    /// Publishers and writers each have a number; their commits are in order.
    pub source: usize,
    pub messages: Vec<Message>,
    /// Taken before the statement (or the first message) was sent.
    pub sent: Instant,
    pub outcome: Outcome,
}

/// Every commit of the run, in the order each source made them.
#[derive(Default)]
pub struct Ledger(Mutex<Vec<Commit>>);

impl Ledger {
    pub fn record(&self, commit: Commit) {
        self.0.lock().unwrap().push(commit);
    }

    pub fn commits(&self) -> Vec<Commit> {
        self.0.lock().unwrap().clone()
    }
}

/// A frame as a connection got it.
#[derive(Debug, Clone)]
pub struct Got {
    pub id: String,
    /// `(channel name, offset)` from a positioned frame.
    pub offset: Option<(String, i64)>,
}

#[derive(Debug, Clone)]
pub enum End {
    /// Still open when the run ended, everything settled.
    Open,
    /// The client closed it.
    Left,
    /// The server closed it with this code and reason.
    Closed(u16, String),
    /// It ended without a close.
    Dropped(String),
}

/// One connection of a reader, from its `101` to its end.
#[derive(Debug, Clone)]
pub struct Life {
    pub reader: usize,
    pub channels: Vec<usize>,
    pub opened: Instant,
    pub positioned: bool,
    /// An event stream: it reads where its history channels stand before it
    /// goes live, as a positioned socket replays.
    pub sse: bool,
    /// A session socket (`pgws.json`).
    pub session: bool,
    /// Channels the server unsubscribed a session from, saying so.
    pub left: Vec<usize>,
    pub got: Vec<Got>,
    pub gaps: usize,
    pub end: End,
}

/// Whether a connection reads the store before it goes live: a positioned socket,
/// or an event stream with a history channel (it starts from the heads).
fn reads_store(plan: &Plan, life: &Life) -> bool {
    life.positioned || (life.sse && life.channels.iter().any(|&c| plan.channels[c].history))
}

/// The id a frame carries: the `id` of a JSON payload, else the first word of the
/// text; inside a positioned frame or a socket's envelope, that of its payload.
pub fn id_of(text: &str) -> Option<String> {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text) {
        if let Some(id) = o.get("id").and_then(Value::as_str) {
            return Some(id.to_owned());
        }
        return o.get("payload").and_then(Value::as_str).and_then(id_of);
    }
    text.split(' ')
        .next()
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
}

/// Where each message stands, built from the ledger and the store.
struct Index<'a> {
    /// id → (commit, its place among its source's messages).
    by_id: HashMap<&'a str, (&'a Commit, usize, usize)>,
    /// id → offset, for stored messages.
    offsets: &'a HashMap<String, i64>,
    /// id → place in the reference listener's order (plain messages).
    rank: HashMap<&'a str, usize>,
}

/// What the store kept: per history channel, the ids in offset order (offset 1 first).
pub type Store = HashMap<usize, Vec<String>>;

pub struct Oracle<'a> {
    pub plan: &'a Plan,
    pub commits: &'a [Commit],
    /// The ids a plain `LISTEN` connection got, in order.
    pub reference: &'a [String],
    pub store: &'a Store,
    /// Faults that happened.
    pub faults: &'a [Fault],
    /// When the run began.
    pub born: Instant,
}

impl Oracle<'_> {
    /// Every breach found, each a line.
    pub fn check(&self, lives: &[Life]) -> Vec<String> {
        let offsets: HashMap<String, i64> = self
            .store
            .values()
            .flat_map(|ids| {
                ids.iter()
                    .enumerate()
                    .map(|(i, id)| (id.clone(), i as i64 + 1))
            })
            .collect();
        let index = self.index(&offsets);
        let mut breaches = self.check_store();
        for life in lives {
            breaches.extend(self.check_life(&index, life));
        }
        breaches.extend(self.check_resumes(lives));
        breaches
    }

    fn index<'b>(&'b self, offsets: &'b HashMap<String, i64>) -> Index<'b> {
        let mut by_id = HashMap::new();
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for commit in self.commits {
            for m in &commit.messages {
                let n = counts.entry(commit.source).or_default();
                by_id.insert(m.id.as_str(), (commit, *n, m.channel));
                *n += 1;
            }
        }
        let rank = self
            .reference
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        Index {
            by_id,
            offsets,
            rank,
        }
    }

    /// The store holds every message committed for certain, each once, and
    /// nothing that was not sent.
    fn check_store(&self) -> Vec<String> {
        let mut breaches = Vec::new();
        let mut sent: HashMap<usize, HashSet<&str>> = HashMap::new();
        let mut certain: HashMap<usize, HashSet<&str>> = HashMap::new();
        for c in self.commits {
            for m in c
                .messages
                .iter()
                .filter(|m| self.plan.channels[m.channel].history)
            {
                if !matches!(c.outcome, Outcome::Failed) {
                    sent.entry(m.channel).or_default().insert(&m.id);
                }
                if matches!(c.outcome, Outcome::Committed(_)) {
                    certain.entry(m.channel).or_default().insert(&m.id);
                }
            }
        }
        for channel in self.plan.history() {
            let kept = self.store.get(&channel).cloned().unwrap_or_default();
            let set: HashSet<&str> = kept.iter().map(String::as_str).collect();
            if set.len() != kept.len() {
                breaches.push(format!("store: channel {channel} keeps a message twice"));
            }
            let empty = HashSet::new();
            for id in certain.get(&channel).unwrap_or(&empty) {
                if !set.contains(id) {
                    breaches.push(format!("store: committed {id} is not kept"));
                }
            }
            for id in &set {
                if !sent.get(&channel).is_some_and(|s| s.contains(id)) {
                    breaches.push(format!("store: keeps {id}, which nobody sent"));
                }
            }
        }
        breaches
    }

    fn check_life(&self, index: &Index<'_>, life: &Life) -> Vec<String> {
        let who = format!(
            "reader {} ({:?}, channels {:?}{}, opened at {:?})",
            life.reader,
            self.plan.readers[life.reader].behaviour,
            life.channels,
            if life.sse { ", event stream" } else { "" },
            life.opened - self.born
        );
        let mut breaches = Vec::new();
        if life.gaps > 0 {
            breaches.push(format!(
                "{who}: {} Gap frame(s) with nothing pruned",
                life.gaps
            ));
        }
        if let Some(why) = self.unexplained(life) {
            breaches.push(format!("{who}: {why}"));
        }
        breaches.extend(self.check_frames(index, life, &who));
        if !life.positioned {
            breaches.extend(self.check_complete(index, life, &who));
        }
        breaches.truncate(20);
        breaches
    }

    /// What a message's order is kept within: its channel where a replay or a
    /// catch-up brings stored messages channel after channel, else the connection.
    fn order_key(&self, life: &Life, channel: usize) -> Option<usize> {
        let stored = self.plan.channels[channel].history;
        let per_channel = reads_store(self.plan, life) || (self.listener_lost() && stored);
        per_channel.then_some(channel)
    }

    fn listener_lost(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f, Fault::TerminateListener | Fault::RestartPostgres))
    }

    /// An ending no fault and no documented cause explains.
    fn unexplained(&self, life: &Life) -> Option<String> {
        let plain = life
            .channels
            .iter()
            .any(|&c| !self.plan.channels[c].history);
        let listener_lost = self.listener_lost();
        let db_restarted = self.faults.contains(&Fault::RestartPostgres);

        match &life.end {
            End::Closed(1013, r) if life.session => {
                Some(format!("a session closed with 1013 {r:?}"))
            }
            End::Open | End::Left => None,
            // pgws stops only when told to, at a fault or at the end.
            End::Closed(1001, _) => None,
            End::Closed(1008, r) if r.starts_with("Slow consumer") => None,
            End::Closed(1012, _) if listener_lost && plain => None,
            End::Closed(1013, _) if db_restarted && reads_store(self.plan, life) => None,
            End::Closed(code, reason) => Some(format!("closed with {code} {reason:?}")),
            // A client that reads nothing cannot be sent its close either: pgws
            // drops it once the write has waited long enough.
            End::Dropped(_) if self.plan.readers[life.reader].behaviour == Behaviour::Slow => None,
            End::Dropped(why) => Some(format!("ended without a close: {why}")),
        }
    }

    /// No duplicate, nothing unknown or of another channel, and commit order: each
    /// source's messages in its order, plain ones as the reference listener got
    /// them, stored ones by offset.
    fn check_frames(&self, index: &Index<'_>, life: &Life, who: &str) -> Vec<String> {
        let mut breaches = Vec::new();
        let mut seen = HashSet::new();
        // A replay (an event stream's too, from the heads) goes channel after
        // channel, before the live frames: there, stored messages keep their order
        // within a channel.
        let mut last_of_source: HashMap<(usize, Option<usize>), (usize, usize)> = HashMap::new();
        let mut last_rank = None;
        let mut last_offset: HashMap<usize, i64> = HashMap::new();
        for (i, got) in life.got.iter().enumerate() {
            let Some(&(commit, place, channel)) = index.by_id.get(got.id.as_str()) else {
                breaches.push(format!("{who}: got {}, which nobody sent", got.id));
                continue;
            };
            if !seen.insert(got.id.as_str()) {
                breaches.push(format!("{who}: got {} twice", got.id));
            }
            if matches!(commit.outcome, Outcome::Failed) {
                breaches.push(format!("{who}: got {}, whose publish was refused", got.id));
            }
            if !life.channels.contains(&channel) {
                breaches.push(format!("{who}: got {} of channel {channel}", got.id));
            }
            let key = (commit.source, self.order_key(life, channel));
            if let Some(&(before, at)) = last_of_source.get(&key)
                && place < before
            {
                let later = &life.got[at].id;
                let when = |id: &str| {
                    index.by_id.get(id).map(|(c, _, _)| {
                        let done = match c.outcome {
                            Outcome::Committed(at) => Some(at - self.born),
                            Outcome::Unknown | Outcome::Failed => None,
                        };
                        (c.sent - self.born, done)
                    })
                };
                breaches.push(format!(
                    "{who}: {} (frame #{i}, channel {channel}, offset {:?}, sent and done at \
                     {:?}) came after {later} (frame #{at}, channel {:?}, offset {:?}, at {:?}), \
                     a later message of its source; end {:?}",
                    got.id,
                    index.offsets.get(&got.id),
                    when(&got.id),
                    index.by_id.get(later.as_str()).map(|e| e.2),
                    index.offsets.get(later),
                    when(later),
                    life.end
                ));
            }
            last_of_source.insert(key, (place, i));
            if let Some(&rank) = index.rank.get(got.id.as_str()) {
                if last_rank.is_some_and(|r| rank < r) {
                    breaches.push(format!("{who}: {} out of commit order", got.id));
                }
                last_rank = Some(rank);
            }
            if let Some(&offset) = index.offsets.get(&got.id) {
                if last_offset.get(&channel).is_some_and(|&o| offset <= o) {
                    breaches.push(format!(
                        "{who}: {} (offset {offset}) out of offset order",
                        got.id
                    ));
                }
                last_offset.insert(channel, offset);
            }
        }
        breaches
    }

    /// Every message committed after the `101`; where an ending allows a loss,
    /// only a suffix may be missing.
    fn check_complete(&self, index: &Index<'_>, life: &Life, who: &str) -> Vec<String> {
        let got: HashSet<&str> = life.got.iter().map(|g| g.id.as_str()).collect();
        // The latest a received message's commit was sent: per channel where a
        // replay runs ahead of the live frames, else over all of them.
        let mut newest: HashMap<Option<usize>, Instant> = HashMap::new();
        for (commit, _, channel) in life
            .got
            .iter()
            .filter_map(|g| index.by_id.get(g.id.as_str()))
        {
            let at = newest
                .entry(self.order_key(life, *channel))
                .or_insert(commit.sent);
            *at = (*at).max(commit.sent);
        }
        let whole = matches!(life.end, End::Open);
        let mut missing = Vec::new();
        for commit in self.commits {
            let Outcome::Committed(done) = commit.outcome else {
                continue;
            };
            if commit.sent <= life.opened {
                continue;
            }
            for m in &commit.messages {
                let gone = life.left.contains(&m.channel);
                if !life.channels.contains(&m.channel) || gone || got.contains(m.id.as_str()) {
                    continue;
                }
                // Missing: a breach if the end allows no loss, or if something
                // committed after it did arrive (a hole, not a suffix).
                let newest = newest.get(&self.order_key(life, m.channel));
                if whole || newest.is_some_and(|&n| n > done) {
                    missing.push(m.id.as_str());
                }
            }
        }
        if missing.is_empty() {
            return Vec::new();
        }
        let shown: Vec<&str> = missing.iter().take(8).copied().collect();
        vec![format!(
            "{who}: {} committed message(s) missing ({:?}), end {:?}, got {}: first {:?}",
            missing.len(),
            if whole { "no loss allowed" } else { "a hole" },
            life.end,
            life.got.len(),
            shown
        )]
    }

    /// A resuming reader's lives together hold each channel's kept messages,
    /// offsets 1 to the last, each once, in order.
    fn check_resumes(&self, lives: &[Life]) -> Vec<String> {
        let mut by_reader: HashMap<usize, Vec<&Life>> = HashMap::new();
        for life in lives.iter().filter(|l| l.positioned) {
            by_reader.entry(life.reader).or_default().push(life);
        }
        let mut breaches = Vec::new();
        for (reader, lives) in by_reader {
            for &channel in &lives[0].channels {
                let name = &self.plan.channels[channel].name;
                let got: Vec<(i64, &str)> = lives
                    .iter()
                    .flat_map(|l| &l.got)
                    .filter_map(|g| match &g.offset {
                        Some((c, o)) if c == name => Some((*o, g.id.as_str())),
                        _ => None,
                    })
                    .collect();
                let kept = self.store.get(&channel).cloned().unwrap_or_default();
                let want: Vec<(i64, &str)> = kept
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (i as i64 + 1, id.as_str()))
                    .collect();
                if got != want {
                    let at = got.iter().zip(&want).position(|(a, b)| a != b);
                    let at = at.unwrap_or(got.len().min(want.len()));
                    breaches.push(format!(
                        "resuming reader {reader}, channel {name}: got {} of {} kept over {} \
                         connection(s); first difference at #{at}: got {:?}, kept {:?}",
                        got.len(),
                        want.len(),
                        lives.len(),
                        got.get(at),
                        want.get(at)
                    ));
                }
            }
        }
        breaches
    }
}
