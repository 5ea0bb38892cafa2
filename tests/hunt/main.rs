//! The delivery hunter: seeded random workloads against the real `pgws` program
//! and a PostgreSQL cluster of its own, each checked by an oracle that knows what
//! was committed (PROTOCOL.md §11, §15, §16).
//!
//! A seed draws a plan: the mapping, plain and history channels, readers over
//! WebSockets and event streams (steady, late, leaving, slow, resuming with
//! `since` or `Last-Event-ID`), publishers (`NOTIFY`s alone and in transactions of
//! up to 5,000, `publish`, messages from sockets, several connections at once,
//! payloads up to the limits) and faults (the listener's backend terminated,
//! PostgreSQL restarted, pgws restarted). [`oracle`] then holds every connection's
//! frames against the commits.
//!
//! - `cargo test --all-features --test hunt`: the fixed seeds, as CI runs them.
//! - `PGWS_HUNT_SEED=N`: that seed alone (a failure prints this command).
//! - `PGWS_HUNT_SECONDS=S`: fresh seeds for about S seconds, after the fixed ones.

#[path = "../common/mod.rs"]
mod common;
mod oracle;
mod plan;
mod publish;
mod read;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{SECRET, cluster::Cluster, program::Program};
use tokio::sync::watch;

use oracle::{End, Ledger, Life, Oracle, Store, id_of};
use plan::{Fault, Mapping, Plan};

/// The seeds CI runs, every time.
const FIXED: std::ops::RangeInclusive<u64> = 1..=12;
/// How long the frames may stay still before the run counts as settled.
const SETTLED: Duration = Duration::from_millis(1500);
/// The longest a run may take to settle once publishing is over.
const SETTLE_MAX: Duration = Duration::from_secs(30);

#[test]
fn every_seed_holds_the_delivery_guarantee() {
    let cluster = Arc::new(Cluster::init());
    cluster.start();
    let seeds: Vec<u64> = match std::env::var("PGWS_HUNT_SEED") {
        Ok(seed) => vec![seed.parse().expect("PGWS_HUNT_SEED is a number")],
        Err(_) => FIXED.collect(),
    };
    for seed in seeds {
        run_seed(seed, &cluster);
    }
    let Some(seconds) = std::env::var("PGWS_HUNT_SECONDS").ok() else {
        return;
    };
    let until = Instant::now() + Duration::from_secs(seconds.parse().expect("seconds"));
    let (mut runs, mut failed) = (0, Vec::new());
    while Instant::now() < until {
        let seed = rand::random::<u32>() as u64;
        runs += 1;
        // A long hunt goes on after a failure, and reports them all at the end.
        if let Err(why) = std::panic::catch_unwind(|| run_seed(seed, &cluster)) {
            eprintln!("{}", why.downcast_ref::<String>().map_or("(panic)", |s| s));
            failed.push(seed);
        }
    }
    println!("hunted {runs} fresh seeds; failed: {failed:?}");
    assert!(failed.is_empty(), "seeds that failed: {failed:?}");
}

fn run_seed(seed: u64, cluster: &Arc<Cluster>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(hunt(seed, cluster.clone()));
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(summary) => println!("seed {seed}: {summary}"),
        Err(breaches) => panic!(
            "seed {seed} breaks the delivery guarantee:\n  {}\nreplay it: \
             PGWS_HUNT_SEED={seed} cargo test --all-features --test hunt -- --nocapture",
            breaches.join("\n  ")
        ),
    }
}

/// What readers, publishers and faults share.
pub struct Env {
    pub plan: Plan,
    pub db: String,
    pub schema: String,
    pub listen_channel: String,
    pub ledger: Ledger,
    addr: Mutex<SocketAddr>,
    stop: watch::Sender<bool>,
    published: watch::Sender<bool>,
    frames: AtomicU64,
    /// Publishers' errors, with what they were doing.
    errors: Mutex<Vec<String>>,
    /// What the programs logged and when faults struck, for a failure's report.
    logs: Mutex<String>,
    /// When the run began: the times in a failure's report count from here.
    pub born: Instant,
}

impl Env {
    pub fn log(&self, text: String) {
        self.logs.lock().unwrap().push_str(&text);
    }

    pub fn error(&self, what: String) {
        self.errors.lock().unwrap().push(what);
    }

    /// Where pgws listens now.
    pub fn addr(&self) -> SocketAddr {
        *self.addr.lock().unwrap()
    }

    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Ready once the run is over.
    pub async fn stop(&self) {
        let _ = self.stop.subscribe().wait_for(|s| *s).await;
    }

    /// Ready once every publisher is done.
    pub async fn published(&self) {
        let _ = self.published.subscribe().wait_for(|s| *s).await;
    }

    pub fn frame_seen(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
}

async fn hunt(seed: u64, cluster: Arc<Cluster>) -> Result<String, Vec<String>> {
    let run = common::unique("h").replace('_', "");
    let env = Arc::new(Env {
        plan: Plan::new(seed, &run),
        db: cluster.uri(),
        schema: "hunt".into(),
        listen_channel: format!("{run}_listen"),
        ledger: Ledger::default(),
        addr: Mutex::new(([127, 0, 0, 1], 0).into()),
        stop: watch::channel(false).0,
        published: watch::channel(false).0,
        frames: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        logs: Mutex::new(String::new()),
        born: Instant::now(),
    });
    let program = Arc::new(Mutex::new(Some(start(&env).await)));
    if env.plan.history().next().is_some() {
        store_ready(&env).await;
    }
    let reference = tokio::spawn(reference(env.clone()));
    let readers: Vec<_> = (env.plan.readers.iter().cloned().enumerate())
        .map(|(i, r)| tokio::spawn(read::run(env.clone(), i, r)))
        .collect();
    // The steady readers are in before the commits that they must get.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let faults = tokio::spawn(faults(env.clone(), cluster.clone(), program.clone()));
    let publishers: Vec<_> = (env.plan.publishers.iter().cloned().enumerate())
        .map(|(i, steps)| tokio::spawn(publish::run(env.clone(), i, steps)))
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let faults = faults.await.unwrap();
    env.published.send_replace(true);
    settle(&env).await;
    env.stop.send_replace(true);
    let mut lives = Vec::new();
    for r in readers {
        lives.extend(r.await.unwrap());
    }
    let reference = reference.await.unwrap();
    let store = store(&env).await;
    let program = program.lock().unwrap().take();
    if let Some(p) = &program {
        env.log(p.stderr());
    }
    tokio::task::spawn_blocking(move || drop(program))
        .await
        .unwrap();
    let commits = env.ledger.commits();
    let oracle = Oracle {
        plan: &env.plan,
        commits: &commits,
        reference: &reference,
        store: &store,
        faults: &faults,
        born: env.born,
    };
    let mut breaches = oracle.check(&lives);
    // Only a database restart explains a failed statement.
    if !faults.contains(&Fault::RestartPostgres) {
        let errors = env.errors.lock().unwrap();
        breaches.extend(
            errors
                .iter()
                .take(5)
                .map(|e| format!("publisher failed: {e}")),
        );
    }
    if !breaches.is_empty() {
        let logs = env.logs.lock().unwrap();
        // Refused handshakes while PostgreSQL restarts say nothing new.
        let lines = logs.lines().filter(|l| !l.contains("tower_http"));
        let tail: Vec<&str> = lines.rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        breaches.push(format!(
            "faults and pgws's log (last 40 lines):\n    {}",
            tail.join("\n    ")
        ));
        return Err(breaches);
    }
    Ok(summary(&env.plan, &commits, &lives, &faults))
}

fn summary(plan: &Plan, commits: &[oracle::Commit], lives: &[Life], faults: &[Fault]) -> String {
    let messages: usize = commits.iter().map(|c| c.messages.len()).sum();
    let frames: usize = lives.iter().map(|l| l.got.len()).sum();
    let mut ends = std::collections::BTreeMap::<String, usize>::new();
    for life in lives {
        let end = match &life.end {
            End::Closed(code, _) => code.to_string(),
            other => format!("{other:?}"),
        };
        *ends.entry(end).or_default() += 1;
    }
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for r in &plan.readers {
        let kind = format!("{:?}/{:?}", r.transport, r.behaviour);
        let kind = kind.split('(').next().unwrap_or_default().to_owned();
        *kinds.entry(kind).or_default() += 1;
    }
    format!(
        "ok: {:?}, {} channels ({} history), queue {}, readers {kinds:?}, {} messages, \
         {frames} frames, {} connections ended {ends:?}, faults {faults:?}",
        plan.mapping,
        plan.channels.len(),
        plan.history().count(),
        plan.queue_length,
        messages,
        lives.len(),
    )
}

/// `pgws` on the run's cluster, as the plan says; off the runtime (it blocks).
async fn start(env: &Env) -> Program {
    let (db, queue) = (env.db.clone(), env.plan.queue_length.to_string());
    let listen = (env.plan.mapping == Mapping::Multiplexed).then(|| env.listen_channel.clone());
    let history = env.plan.history().next().map(|c| {
        let name = &env.plan.channels[c].name;
        format!("{}*", &name[..name.len() - 1])
    });
    let schema = env.schema.clone();
    let program = tokio::task::spawn_blocking(move || {
        let mut vars = vec![
            ("PGWS_DB_URI", db.as_str()),
            ("PGWS_JWT_SECRET", SECRET),
            ("PGWS_ADMIN_ADDR", "127.0.0.1:0"),
            ("PGWS_QUEUE_LENGTH", queue.as_str()),
            ("PGWS_HISTORY_SCHEMA", schema.as_str()),
            ("PGWS_HISTORY_SIZE", "100000000"),
            // Restarts drain for a second: a reader that connects meanwhile gets 1001.
            ("PGWS_DRAIN_PERIOD", "1"),
            ("RUST_LOG", "warn"),
        ];
        if let Some(listen) = &listen {
            vars.push(("PGWS_LISTEN_CHANNEL", listen.as_str()));
        }
        if let Some(history) = &history {
            vars.push(("PGWS_HISTORY", history.as_str()));
        }
        Program::start(&vars, |line| line.starts_with("  Admin:"))
    })
    .await
    .unwrap();
    *env.addr.lock().unwrap() = program.addr();
    program
}

/// Until `<schema>.publish` exists: pgws makes the store at start-up.
async fn store_ready(env: &Env) {
    let db = connect(&env.db).await;
    let sql = format!("select to_regproc('{}.publish') is not null", env.schema);
    for _ in 0..400 {
        if db.query_one(&sql, &[]).await.unwrap().get::<_, bool>(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the history store never appeared");
}

async fn connect(uri: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(uri, tokio_postgres::NoTls)
        .await
        .expect("the hunt's cluster answers");
    tokio::spawn(conn);
    client
}

/// The plan's faults at their times; those that happened.
async fn faults(
    env: Arc<Env>,
    cluster: Arc<Cluster>,
    program: Arc<Mutex<Option<Program>>>,
) -> Vec<Fault> {
    let started = tokio::time::Instant::now();
    let mut done = Vec::new();
    for (at, fault) in env.plan.faults.clone() {
        tokio::time::sleep_until(started + at).await;
        match fault {
            Fault::TerminateListener => {
                let db = connect(&env.db).await;
                let sql = "select count(pg_terminate_backend(pid)) from pg_stat_activity \
                           where application_name = 'pgws-listener'";
                db.query_one(sql, &[]).await.unwrap();
            }
            Fault::RestartPostgres => {
                let cluster = cluster.clone();
                tokio::task::spawn_blocking(move || {
                    cluster.stop();
                    std::thread::sleep(Duration::from_millis(200));
                    cluster.start();
                })
                .await
                .unwrap();
            }
            Fault::RestartPgws => {
                let old = program.lock().unwrap().take();
                if let Some(old) = old {
                    env.log(old.stderr());
                    let status = tokio::task::spawn_blocking(move || old.terminate()).await;
                    assert!(status.unwrap().success(), "pgws did not stop cleanly");
                }
                let new = start(&env).await;
                *program.lock().unwrap() = Some(new);
            }
        }
        env.log(format!("{:?}: {fault:?}\n", env.born.elapsed()));
        done.push(fault);
    }
    done
}

/// Until no frame has arrived for [`SETTLED`] (slow readers are reading by now).
async fn settle(env: &Env) {
    let until = tokio::time::Instant::now() + SETTLE_MAX;
    let mut last = env.frames.load(Ordering::Relaxed);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(SETTLED).await;
        let now = env.frames.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

/// A plain `LISTEN` connection on what pgws listens to: the order PostgreSQL
/// delivers the plain messages in, while it is up.
async fn reference(env: Arc<Env>) -> Vec<String> {
    let channels: Vec<String> = match env.plan.mapping {
        Mapping::PerChannel => env
            .plan
            .plain()
            .map(|c| env.plan.channels[c].name.clone())
            .collect(),
        Mapping::Multiplexed => vec![env.listen_channel.clone()],
    };
    let mut ids = Vec::new();
    while !env.stopped() {
        let Ok((client, mut conn)) = tokio_postgres::connect(&env.db, tokio_postgres::NoTls).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(Ok(msg)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                    let _ = tx.send(n.payload().to_owned());
                }
            }
        });
        let sql: String = channels
            .iter()
            .map(|c| format!("LISTEN {};", common::postgres_quote(c)))
            .collect();
        if client.batch_execute(&sql).await.is_ok() {
            loop {
                tokio::select! {
                    payload = rx.recv() => match payload {
                        Some(p) => ids.extend(id_of(&p)),
                        None => break,
                    },
                    () = env.stop() => break,
                }
            }
        }
        driver.abort();
    }
    ids
}

/// What the store kept of the run's history channels, in offset order.
async fn store(env: &Env) -> Store {
    let mut store = Store::new();
    if env.plan.history().next().is_none() {
        return store;
    }
    let db = connect(&env.db).await;
    let sql = format!(
        "select m.payload from {s}.messages m join {s}.channels c on c.id = m.channel_id \
         where c.channel = $1 order by m.\"offset\"",
        s = env.schema
    );
    for channel in env.plan.history() {
        let rows = db
            .query(&sql, &[&env.plan.channels[channel].name])
            .await
            .unwrap();
        let ids = rows
            .iter()
            .map(|r| id_of(r.get(0)).unwrap_or_default())
            .collect();
        store.insert(channel, ids);
    }
    store
}
