//! One seed's workload, drawn up front so that a seed replays the same plan.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};

/// How WebSocket channels meet PostgreSQL channels (PROTOCOL.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    PerChannel,
    Multiplexed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws,
    /// A WebSocket speaking the session protocol (`pgws.json`, PROTOCOL.md §17).
    Session,
    Sse,
}

/// What a reader does with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Reads everything until the end of the run.
    Steady,
    /// Joins once publishing is under way.
    Late(Duration),
    /// Closes its connection part way through.
    Leaves(Duration),
    /// Reads nothing until publishing ends, on a small receive buffer: it must
    /// get everything or `1008 Slow consumer`.
    Slow,
    /// History channels only: resumes after every end from the last position it
    /// handed on, on whatever instance is up.
    Resumes,
}

#[derive(Debug, Clone)]
pub struct Reader {
    /// Indexes into [`Plan::channels`].
    pub channels: Vec<usize>,
    pub transport: Transport,
    pub behaviour: Behaviour,
}

/// One publishing step.
#[derive(Debug, Clone)]
pub enum Step {
    /// `pg_notify` in a statement of its own.
    Notify { channel: usize, size: usize },
    /// `count` `NOTIFY`s in one transaction over these channels, round robin.
    Transaction {
        channels: Vec<usize>,
        count: usize,
        size: usize,
    },
    /// `count` calls of `<schema>.publish` in one transaction on one history channel.
    Publish {
        channel: usize,
        count: usize,
        size: usize,
    },
    /// Messages from a socket with mode `w` on one channel.
    Socket {
        channel: usize,
        count: usize,
        size: usize,
    },
    /// Publishes from a session socket, pipelined, each answered by an ack or
    /// an error.
    Session {
        channel: usize,
        count: usize,
        size: usize,
    },
    /// A breath between steps.
    Pause(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `pg_terminate_backend` of the listener's connection.
    TerminateListener,
    /// The cluster stopped (`-m fast`) and started again.
    RestartPostgres,
    /// The `pgws` process stopped with SIGTERM and started again.
    RestartPgws,
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    pub history: bool,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub mapping: Mapping,
    pub channels: Vec<Channel>,
    pub queue_length: usize,
    pub readers: Vec<Reader>,
    /// One list of steps per publishing connection (socket steps open a socket).
    pub publishers: Vec<Vec<Step>>,
    /// Faults, each at its time after publishing starts.
    pub faults: Vec<(Duration, Fault)>,
}

/// The largest `NOTIFY` payload drawn: under PostgreSQL's 8000 bytes with room
/// for the id and, from sockets, the envelope.
const MAX_NOTIFY_PAD: usize = 7000;
const MAX_SOCKET_PAD: usize = 6000;
/// History payloads go past the `NOTIFY` limit, as they may.
const MAX_STORED_PAD: usize = 60_000;
/// Messages one seed publishes at the most, all steps together.
const MAX_MESSAGES: usize = 24_000;

impl Plan {
    /// The plan of `seed`; `run` names its channels apart from other runs'.
    pub fn new(seed: u64, run: &str) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let mapping = if rng.random_bool(0.3) {
            Mapping::Multiplexed
        } else {
            Mapping::PerChannel
        };
        let plain = rng.random_range(1..=4);
        let history = if rng.random_bool(0.6) {
            rng.random_range(1..=3)
        } else {
            0
        };
        let mut channels: Vec<Channel> = (0..plain)
            .map(|i| Channel {
                name: format!("{run}_p{i}"),
                history: false,
            })
            .collect();
        channels.extend((0..history).map(|i| Channel {
            name: format!("{run}_h{i}"),
            history: true,
        }));
        let faults = faults(&mut rng);
        let mut plan = Plan {
            seed,
            mapping,
            queue_length: *pick(&mut rng, &[16, 64, 256, 1024]),
            channels,
            readers: Vec::new(),
            publishers: Vec::new(),
            faults,
        };
        plan.readers = (0..rng.random_range(4..=30))
            .map(|_| plan.reader(&mut rng))
            .collect();
        let connections = rng.random_range(1..=4);
        let mut budget = MAX_MESSAGES;
        plan.publishers = (0..connections)
            .map(|_| plan.steps(&mut rng, &mut budget))
            .collect();
        plan
    }

    pub fn plain(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.channels.len()).filter(|&c| !self.channels[c].history)
    }

    pub fn history(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.channels.len()).filter(|&c| self.channels[c].history)
    }

    fn reader(&self, rng: &mut StdRng) -> Reader {
        let history: Vec<usize> = self.history().collect();
        if !history.is_empty() && rng.random_bool(0.3) {
            return Reader {
                channels: some_of(rng, &history),
                transport: transport(rng),
                behaviour: Behaviour::Resumes,
            };
        }
        let all: Vec<usize> = (0..self.channels.len()).collect();
        let behaviour = match rng.random_range(0..10) {
            0..=4 => Behaviour::Steady,
            5 | 6 => Behaviour::Late(Duration::from_millis(rng.random_range(50..1500))),
            7 | 8 => Behaviour::Leaves(Duration::from_millis(rng.random_range(50..1500))),
            _ => Behaviour::Slow,
        };
        Reader {
            channels: some_of(rng, &all),
            transport: transport(rng),
            behaviour,
        }
    }

    fn steps(&self, rng: &mut StdRng, budget: &mut usize) -> Vec<Step> {
        let plain: Vec<usize> = self.plain().collect();
        let history: Vec<usize> = self.history().collect();
        let mut steps = Vec::new();
        for _ in 0..rng.random_range(5..40) {
            let step = match rng.random_range(0..10) {
                0..=2 => Step::Notify {
                    channel: *pick(rng, &plain),
                    size: size(rng, MAX_NOTIFY_PAD),
                },
                3..=5 => Step::Transaction {
                    channels: some_of(rng, &plain),
                    count: burst(rng),
                    size: size(rng, MAX_NOTIFY_PAD / 4),
                },
                6 if !history.is_empty() => Step::Publish {
                    channel: *pick(rng, &history),
                    count: burst(rng).min(1000),
                    size: size(rng, MAX_STORED_PAD / 8),
                },
                7 | 8 => {
                    let channel = *pick(rng, &(0..self.channels.len()).collect::<Vec<_>>());
                    let max = if self.channels[channel].history {
                        MAX_STORED_PAD
                    } else {
                        MAX_SOCKET_PAD
                    };
                    let (count, size) = (rng.random_range(1..50), size(rng, max));
                    match rng.random_bool(0.5) {
                        true => Step::Socket {
                            channel,
                            count,
                            size,
                        },
                        false => Step::Session {
                            channel,
                            count,
                            size,
                        },
                    }
                }
                _ => Step::Pause(Duration::from_millis(rng.random_range(1..120))),
            };
            let n = step.messages();
            if n > *budget {
                break;
            }
            *budget -= n;
            steps.push(step);
        }
        steps
    }
}

impl Step {
    pub fn messages(&self) -> usize {
        match self {
            Step::Notify { .. } => 1,
            Step::Transaction { count, .. }
            | Step::Publish { count, .. }
            | Step::Socket { count, .. }
            | Step::Session { count, .. } => *count,
            Step::Pause(_) => 0,
        }
    }
}

fn faults(rng: &mut StdRng) -> Vec<(Duration, Fault)> {
    let mut faults = Vec::new();
    for _ in 0..rng.random_range(0..=2) {
        let at = Duration::from_millis(rng.random_range(100..2500));
        let fault = match rng.random_range(0..10) {
            0..=3 => Fault::TerminateListener,
            4..=6 => Fault::RestartPgws,
            _ => Fault::RestartPostgres,
        };
        faults.push((at, fault));
    }
    faults.sort_by_key(|(at, _)| *at);
    faults
}

fn transport(rng: &mut StdRng) -> Transport {
    match rng.random_range(0..4) {
        0 => Transport::Sse,
        1 => Transport::Session,
        _ => Transport::Ws,
    }
}

/// Mostly small transactions, now and then one of thousands.
fn burst(rng: &mut StdRng) -> usize {
    match rng.random_range(0..10) {
        0..=5 => rng.random_range(1..20),
        6..=8 => rng.random_range(20..600),
        _ => rng.random_range(600..=5000),
    }
}

/// Mostly short payloads, now and then one near `max`.
fn size(rng: &mut StdRng, max: usize) -> usize {
    if rng.random_bool(0.1) {
        rng.random_range(max / 2..=max)
    } else {
        rng.random_range(0..64)
    }
}

fn pick<'a, T>(rng: &mut StdRng, from: &'a [T]) -> &'a T {
    &from[rng.random_range(0..from.len())]
}

/// One to three of `from`, in random order, without repeats.
fn some_of(rng: &mut StdRng, from: &[usize]) -> Vec<usize> {
    let n = rng.random_range(1..=from.len().min(3));
    let mut all = from.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(all.swap_remove(rng.random_range(0..all.len())));
    }
    out
}
