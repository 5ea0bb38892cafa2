//! History channels across a rolling restart, end to end: three `pgws`
//! processes on one store, clients on ten history channels resuming with
//! `since=` wherever they can, a publisher running throughout, and every
//! process stopped (SIGTERM) and started again in turn. At the end every client
//! holds every message of its channels exactly once, in order.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use tokio::{sync::watch, task::JoinHandle};
use tokio_websockets::ClientBuilder;

use crate::common::{program::Program, *};

const CHANNELS: usize = 10;
/// Ten clients on one channel each, ten on two.
const CLIENTS: usize = 20;
/// The publisher stops here at the latest.
const MAX_MESSAGES: usize = 4000;
const INSTANCES: usize = 3;

/// Where the clients may connect: the instances up now.
type Live = Arc<Mutex<Vec<SocketAddr>>>;

/// What one client got on each of its channels: (offset, payload), in order.
type Got = HashMap<String, Vec<(i64, String)>>;

/// A client's task: what it got, and how many sockets it took.
type Client = JoinHandle<(Got, usize)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_client_gets_every_message_once_in_order_through_a_rolling_restart() {
    let schema = unique("roll");
    let _drop = SchemaGuard(schema.clone());
    let q = postgres_quote(&schema);
    let channels: Vec<String> = (0..CHANNELS).map(|_| unique("roll")).collect();
    let db = db().await;
    let publish = format!("select {q}.publish($1, $2)");

    let mut programs: Vec<Program> = Vec::new();
    for _ in 0..INSTANCES {
        programs.push(start(schema.clone()).await);
    }
    let live: Live = Arc::new(Mutex::new(programs.iter().map(Program::addr).collect()));
    // The store exists once an instance is ready; a first message per channel
    // gives each its epoch, and the clients a position to start from.
    let mut committed: HashMap<String, Vec<String>> = HashMap::new();
    for chan in &channels {
        let payload = format!("{chan} 0");
        until_ok(async || db.query_one(&publish, &[chan, &payload]).await.is_ok()).await;
        committed.insert(chan.clone(), vec![payload]);
    }
    let epoch_sql = format!("select epoch from {q}.channels where channel = $1");
    let mut epochs = HashMap::new();
    for chan in &channels {
        let epoch: String = db.query_one(&epoch_sql, &[chan]).await.unwrap().get(0);
        epochs.insert(chan.clone(), epoch);
    }

    let (targets_tx, targets) = watch::channel(None::<HashMap<String, i64>>);
    let clients: Vec<(Vec<String>, Client)> = (0..CLIENTS)
        .map(|k| {
            let mut mine = vec![channels[k % CHANNELS].clone()];
            if k >= CHANNELS {
                mine.push(channels[(k + CHANNELS / 2) % CHANNELS].clone());
            }
            let from = mine
                .iter()
                .map(|c| (c.clone(), (epochs[c].clone(), 0)))
                .collect();
            let task = tokio::spawn(client(mine.clone(), from, live.clone(), targets.clone()));
            (mine, task)
        })
        .collect();

    // The publisher, throughout: round robin over the channels, from SQL.
    let (stop_tx, stop) = watch::channel(false);
    let publisher = {
        let (channels, publish) = (channels.clone(), publish.clone());
        tokio::spawn(async move {
            let db = crate::common::db().await;
            let mut sent: Vec<(String, String)> = Vec::new();
            while !*stop.borrow() && sent.len() < MAX_MESSAGES {
                let chan = &channels[sent.len() % CHANNELS];
                let payload = format!("{chan} {}", sent.len() + 1);
                db.query_one(&publish, &[chan, &payload]).await.unwrap();
                sent.push((chan.clone(), payload));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        })
    };

    // Every instance in turn: out of the clients' list, SIGTERM, started again.
    for i in 0..INSTANCES {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old = programs.remove(0);
        live.lock().unwrap().retain(|a| *a != old.addr());
        let status = tokio::task::spawn_blocking(move || old.terminate())
            .await
            .unwrap();
        assert!(status.success(), "instance {i}: {status}");
        let new = start(schema.clone()).await;
        live.lock().unwrap().push(new.addr());
        programs.push(new);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send_replace(true);
    for (chan, payload) in publisher.await.unwrap() {
        committed.get_mut(&chan).unwrap().push(payload);
    }
    let counts = committed
        .iter()
        .map(|(c, p)| (c.clone(), p.len() as i64))
        .collect();
    targets_tx.send_replace(Some(counts));

    for (k, (mine, task)) in clients.into_iter().enumerate() {
        let (got, sockets) = tokio::time::timeout(WAIT * 2, task)
            .await
            .unwrap_or_else(|_| panic!("client {k} did not get everything in time"))
            .unwrap();
        // Its first instance was stopped under it: it resumed at least once.
        assert!(sockets >= 2, "client {k} had {sockets} socket(s)");
        for chan in &mine {
            let want: Vec<(i64, String)> = committed[chan]
                .iter()
                .enumerate()
                .map(|(i, p)| (i as i64 + 1, p.clone()))
                .collect();
            assert_eq!(got[chan], want, "client {k}, channel {chan}");
        }
    }
}

/// Starts one instance on the shared store (off the runtime: it blocks).
async fn start(schema: String) -> Program {
    tokio::task::spawn_blocking(move || {
        let uri = db_uri();
        let vars = [
            ("PGWS_DB_URI", uri.as_str()),
            ("PGWS_JWT_SECRET", SECRET),
            ("PGWS_ADMIN_ADDR", "127.0.0.1:0"),
            ("PGWS_HISTORY", "roll_*"),
            ("PGWS_HISTORY_SCHEMA", schema.as_str()),
            ("PGWS_HISTORY_SIZE", "100000"),
            ("RUST_LOG", "warn"),
        ];
        Program::start(&vars, |line| line.starts_with("  Admin:"))
    })
    .await
    .unwrap()
}

/// One client: connects to any live instance, resumes each channel after the
/// last position it got, and reconnects whenever its socket ends, until it has
/// as many messages on each channel as `targets` says. What it got, and how
/// many sockets it took.
async fn client(
    channels: Vec<String>,
    mut from: HashMap<String, (String, i64)>,
    live: Live,
    mut targets: watch::Receiver<Option<HashMap<String, i64>>>,
) -> (Got, usize) {
    let mut got: Got = channels.iter().map(|c| (c.clone(), Vec::new())).collect();
    let claims = serde_json::json!({"mode": "r", "channels": &channels, "exp": now() + 3600});
    let token = token(claims);
    let mut sockets = 0;
    for attempt in 0.. {
        let done = |got: &Got, targets: &Option<HashMap<String, i64>>| {
            targets.as_ref().is_some_and(|t| {
                channels
                    .iter()
                    .all(|c| got[c].len() as i64 >= t[c.as_str()])
            })
        };
        if done(&got, &targets.borrow()) {
            return (got, sockets);
        }
        let addr = {
            let live = live.lock().unwrap();
            live[attempt % live.len()]
        };
        let since: Vec<String> = channels
            .iter()
            .map(|c| format!("since={}:{}:{c}", from[c].0, from[c].1))
            .collect();
        let url = format!("ws://{addr}/{token}?{}", since.join("&"));
        let Ok((mut ws, _)) = ClientBuilder::from_uri(url.parse().unwrap())
            .connect()
            .await
        else {
            // Stopping, not ready yet, or gone: another one.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        sockets += 1;
        loop {
            let msg = tokio::select! {
                msg = ws.next() => msg,
                _ = targets.changed() => {
                    if done(&got, &targets.borrow()) {
                        return (got, sockets);
                    }
                    continue;
                }
            };
            let Some(Ok(msg)) = msg else { break };
            let Some(text) = msg.as_text() else {
                if msg.is_close() {
                    break;
                }
                continue;
            };
            let frame: serde_json::Value = serde_json::from_str(text).unwrap();
            assert!(frame.get("event").is_none(), "unexpected {frame}");
            let chan = frame["channel"].as_str().unwrap().to_owned();
            let (epoch, offset) = (
                frame["epoch"].as_str().unwrap(),
                frame["offset"].as_i64().unwrap(),
            );
            let payload = frame["payload"].as_str().unwrap().to_owned();
            from.insert(chan.clone(), (epoch.to_owned(), offset));
            got.get_mut(&chan).unwrap().push((offset, payload));
            if done(&got, &targets.borrow()) {
                return (got, sockets);
            }
        }
    }
    unreachable!()
}

/// Polls `ok` until it holds, within [`WAIT`] times 3.
async fn until_ok(mut ok: impl AsyncFnMut() -> bool) {
    tokio::time::timeout(WAIT * 3, async {
        while !ok().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the store never got ready");
}

/// Drops the test's store at the end, even after a panic.
struct SchemaGuard(String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = postgres_quote(&self.0);
        cleanup_sql(vec![format!("drop schema if exists {schema} cascade")]);
    }
}
