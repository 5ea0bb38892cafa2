//! pgws behind HAProxy with `examples/deploy/haproxy.cfg`. Three instances
//! restarted in turn (SIGTERM, wait, start again) while a publisher runs:
//! resuming clients end with every message exactly once, in order; plain ones see
//! only `1001` endings and no gap within a socket; nobody sees a failed handshake,
//! and HAProxy never has to retry one elsewhere (the drain takes each instance
//! out before it stops). And a WebSocket over HTTP/2 (RFC 8441) through it.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use crate::{
    clients::{self, Seen},
    common::{program::Program, *},
    proxies::{Backend, Proxy, find},
};

const HISTORY_CHANNELS: usize = 3;
const PLAIN_CHANNELS: usize = 2;
/// The publisher stops here at the latest.
const MAX_MESSAGES: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_behind_haproxy_loses_nothing_and_fails_no_handshake() {
    let Some(haproxy) = find("haproxy", "PGWS_HAPROXY") else {
        return;
    };
    let schema = unique("deploy");
    let _drop = SchemaGuard(schema.clone());
    let q = postgres_quote(&schema);
    let history: Vec<String> = (0..HISTORY_CHANNELS).map(|_| unique("dep")).collect();
    let plain: Vec<String> = (0..PLAIN_CHANNELS).map(|_| unique("pln")).collect();
    let backends: Vec<Backend> = (0..3).map(|_| Backend::free()).collect();
    let mut programs = Vec::new();
    for b in &backends {
        programs.push(start(*b, &schema).await);
    }
    let proxy = Proxy::haproxy(&haproxy, &backends);
    let front = proxy.addr;

    // A first message per history channel gives it its epoch.
    let db = db().await;
    let publish = format!("select {q}.publish($1, $2)");
    let mut epochs = HashMap::new();
    for chan in &history {
        let payload = format!("{chan} 0");
        db.query_one(&publish, &[chan, &payload]).await.unwrap();
        let sql = format!("select epoch from {q}.channels where channel = $1");
        let epoch: String = db.query_one(&sql, &[chan]).await.unwrap().get(0);
        epochs.insert(chan.clone(), epoch);
    }

    // Clients: per history channel one WebSocket and event streams over
    // HTTP/1.1 and HTTP/2, all resuming; two WebSockets per plain channel.
    let (stop_tx, stop) = watch::channel(false);
    let mut resuming = Vec::new();
    for chan in &history {
        let path = format!("/{chan}/{}", token(claims("r", None)));
        let epoch = epochs[chan].clone();
        let (until_tx, until) = watch::channel(None::<usize>);
        let ws = clients::resuming_ws(front, path.clone(), epoch.clone(), until);
        resuming.push((chan.clone(), "ws", until_tx, tokio::spawn(ws)));
        for (h2, kind) in [(false, "sse/1.1"), (true, "sse/2")] {
            let (until_tx, until) = watch::channel(None::<usize>);
            let sse = clients::resuming_sse(front, path.clone(), epoch.clone(), h2, until);
            resuming.push((chan.clone(), kind, until_tx, tokio::spawn(sse)));
        }
    }
    let mut plain_clients = Vec::new();
    for chan in plain.iter().chain(&plain) {
        let path = format!("/{chan}/{}", token(claims("r", None)));
        plain_clients.push(tokio::spawn(clients::plain_ws(front, path, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The publisher, throughout: round robin over every channel.
    let (publishing_tx, publishing) = watch::channel(true);
    let publisher = {
        let (history, plain, publish) = (history.clone(), plain.clone(), publish.clone());
        tokio::spawn(async move {
            let db = crate::common::db().await;
            let mut sent: HashMap<String, Vec<String>> = HashMap::new();
            let all: Vec<&String> = history.iter().chain(&plain).collect();
            for n in 1..=MAX_MESSAGES {
                if !*publishing.borrow() {
                    break;
                }
                let chan = all[n % all.len()];
                let payload = format!("{chan} {n}");
                if history.contains(chan) {
                    db.query_one(&publish, &[chan, &payload]).await.unwrap();
                } else {
                    db.execute("select pg_notify($1, $2)", &[chan, &payload])
                        .await
                        .unwrap();
                }
                sent.entry(chan.clone()).or_default().push(payload);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            sent
        })
    };

    // Every instance in turn: SIGTERM, its exit, started again, back in HAProxy.
    let rolling = Instant::now();
    let mut stops = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let old = programs.remove(0);
        let stopping = Instant::now();
        let status = tokio::task::spawn_blocking(move || old.terminate())
            .await
            .unwrap();
        assert!(status.success(), "instance {i}: {status}");
        stops.push(stopping.elapsed());
        programs.push(start(*b, &schema).await);
        // Up again in HAProxy's eyes: two good checks a second apart.
        wait_ready(b).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let rolled = rolling.elapsed();
    publishing_tx.send_replace(false);
    let sent = publisher.await.unwrap();
    let want = |chan: &String| {
        let mut all = vec![format!("{chan} 0")];
        all.extend(sent[chan].iter().cloned());
        all
    };
    for (chan, _, until, _) in &resuming {
        until.send_replace(Some(want(chan).len()));
    }

    let mut reconnects = 0;
    for (chan, kind, _until, task) in resuming {
        let target = want(&chan);
        let seen = finish(task, &proxy).await;
        assert!(
            seen.failures.is_empty(),
            "{kind} on {chan}: {:?}",
            seen.failures
        );
        assert!(
            seen.endings.iter().all(|e| e == "1001"),
            "{kind} on {chan}: {:?}",
            seen.endings
        );
        assert!(seen.sockets.len() >= 2, "{kind} on {chan} never moved");
        let got = seen.payloads();
        if got != target {
            let at = got.iter().zip(&target).position(|(a, b)| a != b);
            let at = at.unwrap_or(got.len().min(target.len()));
            panic!(
                "{kind} on {chan}: {} of {} messages; from #{at}: got {:?}, sent {:?}; socket lengths {:?}",
                got.len(),
                target.len(),
                &got[at..(at + 3).min(got.len())],
                &target[at..(at + 3).min(target.len())],
                seen.sockets.iter().map(Vec::len).collect::<Vec<_>>(),
            );
        }
        reconnects += seen.sockets.len() - 1;
    }
    stop_tx.send_replace(true);
    for (k, task) in plain_clients.into_iter().enumerate() {
        let seen = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert!(seen.failures.is_empty(), "plain {k}: {:?}", seen.failures);
        assert!(
            seen.endings.iter().all(|e| e == "1001"),
            "plain {k}: {:?}",
            seen.endings
        );
        assert!(seen.sockets.len() >= 2, "plain {k} never moved");
        let chan = &plain[k % PLAIN_CHANNELS];
        for socket in &seen.sockets {
            assert_no_gap(chan, &sent[chan], socket);
        }
        reconnects += seen.sockets.len() - 1;
    }
    // The drain took each instance out of HAProxy before it stopped: no client
    // was sent to a closed port and had to be retried elsewhere.
    for server in proxy.server_stats() {
        let count = |name: &str| server[name].parse::<u64>().unwrap_or(0);
        let name = &server["svname"];
        assert_eq!(count("econ"), 0, "{name}: connections that failed");
        assert_eq!(count("wretr") + count("wredis"), 0, "{name}: retried");
        assert_eq!(count("eresp"), 0, "{name}: answers that failed");
    }
    eprintln!(
        "rolling restart of 3 instances behind HAProxy: {rolled:.1?} \
         (SIGTERM to exit: {stops:.1?}), {reconnects} reconnects of {} clients",
        HISTORY_CHANNELS * 3 + PLAIN_CHANNELS * 2
    );
}

/// A resuming client's answer, once it has all its messages.
async fn finish(task: tokio::task::JoinHandle<Seen>, proxy: &Proxy) -> Seen {
    match tokio::time::timeout(WAIT * 2, task).await {
        Ok(seen) => seen.unwrap(),
        Err(_) => panic!(
            "a client did not get everything in time; HAProxy:\n{}",
            proxy.log()
        ),
    }
}

/// What one plain socket got is a run of what was sent, with nothing missing.
fn assert_no_gap(chan: &str, sent: &[String], got: &[String]) {
    let Some(first) = got.first() else { return };
    let start = sent
        .iter()
        .position(|p| p == first)
        .unwrap_or_else(|| panic!("{chan}: {first} was never sent"));
    assert_eq!(
        got,
        &sent[start..start + got.len()],
        "{chan}: a gap within one socket"
    );
}

/// One instance on its fixed addresses (off the runtime: it blocks).
async fn start(b: Backend, schema: &str) -> Program {
    let schema = schema.to_owned();
    tokio::task::spawn_blocking(move || {
        let uri = db_uri();
        let (port, admin) = (b.public.port().to_string(), b.admin.to_string());
        let vars = [
            ("PGWS_DB_URI", uri.as_str()),
            ("PGWS_JWT_SECRET", SECRET),
            ("PGWS_PORT", port.as_str()),
            ("PGWS_ADMIN_ADDR", admin.as_str()),
            ("PGWS_HISTORY", "dep_*"),
            ("PGWS_HISTORY_SCHEMA", schema.as_str()),
            ("PGWS_HISTORY_SIZE", "100000"),
            ("RUST_LOG", "warn"),
        ];
        Program::start(&vars, |line| line.starts_with("  Admin:"))
    })
    .await
    .unwrap()
}

/// Polls the instance's `/ready` until it answers 200.
async fn wait_ready(b: &Backend) {
    let ready = async {
        loop {
            let req = http::Request::get("/ready")
                .body(http_body_util::Full::default())
                .unwrap();
            if send_to(b.admin, req).await.0 == http::StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(WAIT * 3, ready)
        .await
        .expect("the instance never got ready");
}

/// Drops the test's store at the end, even after a panic.
struct SchemaGuard(String);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = postgres_quote(&self.0);
        cleanup_sql(vec![format!("drop schema if exists {schema} cascade")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_passes_through_haproxy() {
    let Some(haproxy) = find("haproxy", "PGWS_HAPROXY") else {
        return;
    };
    let backends: Vec<Backend> = (0..3).map(|_| Backend::free()).collect();
    let schema = unique("deploy_h2");
    let _drop = SchemaGuard(schema.clone());
    let mut programs = Vec::new();
    for b in &backends {
        programs.push(start(*b, &schema).await);
    }
    let proxy = Proxy::haproxy(&haproxy, &backends);
    let chan = unique("h2ws");
    let uri = format!("http://{}/{chan}/{}", proxy.addr, token(claims("rw", None)));

    // Cleartext HTTP/2 with prior knowledge, the socket an RFC 8441 stream.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(&uri)
        .header(http::header::SEC_WEBSOCKET_VERSION, "13")
        .body(Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut res = tokio::time::timeout(WAIT, h2.send_request(req))
        .await
        .expect("no answer in time")
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::OK, "{}", proxy.log());
    let upgraded = tokio::time::timeout(WAIT, hyper::upgrade::on(&mut res))
        .await
        .expect("no stream in time")
        .unwrap();
    let mut ws = tokio_websockets::ClientBuilder::new().take_over(TokioIo::new(upgraded));

    notify(&chan, "over h2").await;
    assert_eq!(recv_text(&mut ws).await, "over h2");
    ws.send(tokio_websockets::Message::text("back"))
        .await
        .unwrap();
    let envelope: serde_json::Value = serde_json::from_str(&recv_text(&mut ws).await).unwrap();
    assert_eq!(envelope["payload"], "back");
    drop(programs);
}
