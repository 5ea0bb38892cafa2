//! Server-sent event streams through the layer (PROTOCOL.md §16), read by a real
//! hyper client over HTTP/1.1 and HTTP/2 that parses the stream as a browser
//! does, against the shared PostgreSQL.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};

use crate::common::*;
use crate::history::{Schema, epoch_of, history_server_with};

/// One dispatched event, as `EventSource` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    /// `message` unless named.
    event: String,
    data: String,
    /// The stream's last event id when it fired.
    id: Option<String>,
}

/// An open stream and the parser's state (the HTML standard's algorithm).
struct Stream {
    headers: HeaderMap,
    body: Incoming,
    buf: Vec<u8>,
    /// The last event id, kept across events as a browser keeps it.
    last_id: Option<String>,
    retry: Option<u64>,
    comments: usize,
    // The event being read.
    event: Option<String>,
    data: Option<String>,
}

#[derive(Clone, Copy, Debug)]
enum Version {
    H1,
    H2,
}

/// Sends a `GET` accepting `text/event-stream` on a fresh connection; the open
/// stream, or the refusal's status and text.
async fn request(
    server: &TestServer,
    version: Version,
    path: &str,
    headers: &[(&str, &str)],
    small_buffer: bool,
) -> Result<Stream, (StatusCode, String)> {
    let socket = TcpSocket::new_v4().unwrap();
    if small_buffer {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let tcp: TcpStream = socket.connect(server.addr).await.unwrap();
    let io = TokioIo::new(tcp);
    let mut req =
        Request::get(format!("http://{}{path}", server.addr)).header("accept", "text/event-stream");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let send = async {
        match version {
            Version::H1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await.unwrap()
            }
            Version::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await.unwrap()
            }
        }
    };
    let res = tokio::time::timeout(WAIT, send).await.expect("no answer");
    let (parts, body) = res.into_parts();
    if parts.status != StatusCode::OK {
        let text = body.collect().await.unwrap().to_bytes();
        return Err((parts.status, String::from_utf8_lossy(&text).into_owned()));
    }
    Ok(Stream {
        headers: parts.headers,
        body,
        buf: Vec::new(),
        last_id: None,
        retry: None,
        comments: 0,
        event: None,
        data: None,
    })
}

async fn open(server: &TestServer, path: &str) -> Stream {
    open_with(server, Version::H1, path, &[]).await
}

async fn open_with(
    server: &TestServer,
    version: Version,
    path: &str,
    headers: &[(&str, &str)],
) -> Stream {
    match request(server, version, path, headers, false).await {
        Ok(stream) => stream,
        Err(refused) => panic!("{path}: refused {refused:?}"),
    }
}

impl Stream {
    /// The next event; `None` once the stream has ended.
    async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(WAIT, self.next_event())
            .await
            .expect("no event in time")
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let line = String::from_utf8(line[..line.len() - 1].to_vec()).unwrap();
                if let Some(event) = self.line(&line) {
                    return Some(event);
                }
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// One line of the stream; an event when it ends one.
    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let event = self.event.take();
            let data = self.data.take()?;
            return Some(Event {
                event: event.unwrap_or_else(|| "message".into()),
                data,
                id: self.last_id.clone(),
            });
        }
        if line.starts_with(':') {
            self.comments += 1;
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.into()),
            "id" => self.last_id = Some(value.into()),
            "retry" => self.retry = value.parse().ok(),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.into()),
            },
            other => panic!("unexpected field {other:?}"),
        }
        None
    }

    /// The next event, which must be the stream's ending: its close code and reason.
    async fn ending(&mut self) -> (u64, String) {
        let event = self
            .next()
            .await
            .expect("the stream ended without an event");
        assert_eq!(event.event, "close", "{event:?}");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert!(self.next().await.is_none(), "more after the ending");
        (
            data["code"].as_u64().unwrap(),
            data["reason"].as_str().unwrap().to_owned(),
        )
    }
}

fn path_for(claims: Value) -> String {
    format!("/{}", token(claims))
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn one_channel_gets_each_payload_as_a_message_event_over_http1_and_http2() {
    let server = TestServer::start(config()).await;
    for version in [Version::H1, Version::H2] {
        let chan = unique("sse_one");
        let mut stream =
            open_with(&server, version, &path_for(claims("r", Some(&chan))), &[]).await;
        assert_eq!(
            stream.headers["content-type"],
            "text/event-stream; charset=utf-8"
        );
        assert_eq!(stream.headers["x-accel-buffering"], "no");
        assert_eq!(stream.headers["cache-control"], "no-cache");
        let payloads = ["hello", "", "a\nb\r\nc\rd", "trailing\n", " lead"];
        for p in payloads {
            notify(&chan, p).await;
        }
        for p in payloads {
            let event = stream.next().await.unwrap();
            let want = p.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(event.event, "message", "{version:?}");
            assert_eq!(event.data, want, "{version:?}");
            assert_eq!(event.id, None);
        }
        assert_eq!(stream.retry, Some(2000));
        assert_eq!(server.layer.stats().open_event_streams, 1);
        drop(stream);
        until("the stream is closed", || {
            server.layer.stats().open_event_streams == 0
        })
        .await;
    }
}

#[tokio::test]
async fn a_stream_of_several_channels_says_which_channel_each_event_is_from() {
    let server = TestServer::start(config()).await;
    let (one, two) = (unique("sse_m1"), unique("sse_m2"));
    let t = token(json!({"mode": "r", "channels": [one, two], "exp": now() + 3600}));
    let bearer = format!("Bearer {t}");
    let mut stream = open_with(
        &server,
        Version::H2,
        "/",
        &[("authorization", bearer.as_str())],
    )
    .await;
    notify(&one, "first\nline").await;
    notify(&two, "second").await;
    for (chan, payload) in [(&one, "first\nline"), (&two, "second")] {
        let event = stream.next().await.unwrap();
        assert_eq!(event.event, "message");
        assert!(!event.data.contains('\n'), "{event:?}");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(data, json!({"channel": chan, "payload": payload}));
    }
}

/// A request that must be refused: its status and text.
async fn refused(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    match request(server, Version::H1, path, headers, false).await {
        Ok(_) => panic!("{path} was not refused"),
        Err(refused) => refused,
    }
}

#[tokio::test]
async fn refusals_are_the_handshake_refusals() {
    let server = TestServer::start(
        config()
            .allowed_origins(["https://app.example"])
            .max_sockets(1),
    )
    .await;
    let chan = unique("sse_refused");
    let bad_sig = format!("{}x", token(claims("r", Some(&chan))));
    let cases = [
        (format!("/{bad_sig}"), 401, "Invalid token"),
        (
            path_for(json!({"mode": "r", "channel": chan, "exp": now() - 100})),
            401,
            "Token expired",
        ),
        (path_for(claims("w", Some(&chan))), 403, "Read not allowed"),
        (path_for(claims("x", Some(&chan))), 403, "Invalid mode"),
        (path_for(json!({"mode": "r"})), 403, "No allowed channels"),
        (
            path_for(claims("r", Some(&"x".repeat(64)))),
            400,
            "Invalid channel name",
        ),
    ];
    for (path, status, text) in cases {
        let (got, body) = refused(&server, &path, &[]).await;
        assert_eq!(got.as_u16(), status, "{path}: {body}");
        assert!(body.starts_with(text), "{path}: {body}");
    }
    let ok = path_for(claims("r", Some(&chan)));
    let (status, body) = refused(&server, &ok, &[("origin", "https://evil.example")]).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (403, "Origin not allowed")
    );
    let other = token(claims("r", Some("other")));
    let bearer = format!("Bearer {other}");
    let (status, body) = refused(&server, &ok, &[("authorization", &bearer)]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("Conflicting tokens"), "{body}");

    // The socket limit counts streams: the one open takes the only place.
    let _open = open_with(
        &server,
        Version::H1,
        &ok,
        &[("origin", "https://app.example")],
    )
    .await;
    let (status, body) = refused(&server, &ok, &[]).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "Too many connections")
    );
    server.layer.shutdown().await;
    let (status, body) = refused(&server, &ok, &[]).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (503, "Server shutting down")
    );
    let refusals = server.layer.stats().handshake_refusals;
    assert!(refusals.contains(&("read_not_allowed", 1)), "{refusals:?}");
    assert!(
        refusals.contains(&("origin_not_allowed", 1)),
        "{refusals:?}"
    );
}

#[tokio::test]
async fn an_idle_stream_gets_keep_alive_comments() {
    let server = TestServer::start(config().sse_keep_alive(Duration::from_millis(100))).await;
    let chan = unique("sse_idle");
    let mut stream = open(&server, &path_for(claims("r", Some(&chan)))).await;
    // The notification comes after some keep-alives have been read past.
    let later = chan.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        notify(&later, "after a while").await;
    });
    assert_eq!(stream.next().await.unwrap().data, "after a while");
    assert!(stream.comments >= 1, "{} comments", stream.comments);
}

#[tokio::test]
async fn a_lost_listener_ends_a_plain_stream_with_1012() {
    let app = unique("sse_app");
    let uri = format!("{}?application_name={app}", db_uri());
    let server = TestServer::start(config().database_url(uri)).await;
    let chan = unique("sse_lost");
    let mut stream = open(&server, &path_for(claims("r", Some(&chan)))).await;
    notify(&chan, "before").await;
    assert_eq!(stream.next().await.unwrap().data, "before");
    assert!(terminate_backends(&app).await >= 1);
    let (code, reason) = stream.ending().await;
    assert_eq!(code, 1012);
    assert!(reason.starts_with("Listener restarted"), "{reason}");
}

#[tokio::test]
async fn an_expiring_token_ends_the_stream_with_3001() {
    let server = TestServer::start(config()).await;
    let chan = unique("sse_exp");
    let mut stream = open(
        &server,
        &path_for(json!({"mode": "r", "channel": chan, "exp": now() + 2})),
    )
    .await;
    assert_eq!(stream.ending().await, (3001, "JWT expired".to_owned()));
}

#[tokio::test]
async fn shutdown_ends_the_stream_with_1001_after_what_was_queued() {
    let server = TestServer::start(config()).await;
    let chan = unique("sse_down");
    let mut stream = open(&server, &path_for(claims("r", Some(&chan)))).await;
    notify(&chan, "last").await;
    assert_eq!(stream.next().await.unwrap().data, "last");
    let layer = server.layer.clone();
    let down = tokio::spawn(async move { layer.shutdown().await });
    assert_eq!(stream.ending().await, (1001, "Going away".to_owned()));
    down.await.unwrap();
    assert_eq!(server.layer.stats().open_event_streams, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_is_ended_without_holding_up_the_others() {
    let server = TestServer::start(config().queue_length(64)).await;
    let chan = unique("sse_slow");
    let path = path_for(claims("r", Some(&chan)));
    let mut slow = request(&server, Version::H1, &path, &[], true)
        .await
        .unwrap();
    let mut fast = open(&server, &path).await;
    // 3000 notifications of 7 KB, far more than 64 queued plus the socket
    // buffers, in batches the fast reader takes in before the next.
    const N: i32 = 3000;
    const BATCH: i32 = 32;
    let db = db().await;
    for from in (1..=N).step_by(BATCH as usize) {
        db.execute(
            "select pg_notify($1, repeat('x', 7000) || ':' || g) \
             from generate_series($2::int, $3::int) g",
            &[&chan, &from, &(from + BATCH - 1).min(N)],
        )
        .await
        .unwrap();
        for i in from..=(from + BATCH - 1).min(N) {
            let event = fast.next().await.unwrap();
            assert!(
                event.data.ends_with(&format!(":{i}")),
                "{i}: {}",
                &event.data[7000..]
            );
        }
    }
    // Reading again, the slow one gets what was written before, then the ending
    // (seen, and counted, once the stream is polled again).
    let mut got = 0;
    let ending = loop {
        let event = slow.next().await.expect("no ending");
        if event.event == "close" {
            break event;
        }
        got += 1;
    };
    assert!(got < N, "{got}");
    let data: Value = serde_json::from_str(&ending.data).unwrap();
    assert_eq!(data["code"], 1008);
    until("the slow consumer is counted", || {
        server.layer.stats().slow_consumer_closes == 1
    })
    .await;
}

/// A server keeping the history of `sse_h*` channels, with a small retention.
async fn history(schema: &Schema, size: usize) -> TestServer {
    history_server_with(schema, config().history("sse_h*").history_size(size)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_every_channel_with_no_gap_and_no_duplicate() {
    let schema = Schema::new();
    let server = history(&schema, 1000).await;
    let (one, two, plain) = (unique("sse_ha"), unique("sse_hb"), unique("sse_plain"));
    let path = path_for(json!({"mode": "r", "channels": [one, two, plain], "exp": now() + 3600}));
    const N: i64 = 150;
    let mut stream = open(&server, &path).await;
    // Published while the client comes and goes.
    let publisher = {
        let (schema_name, one, two) = (schema.name.clone(), one.clone(), two.clone());
        tokio::spawn(async move {
            let db = db().await;
            let sql = format!("select {}.publish($1, $2)", postgres_quote(&schema_name));
            for i in 1..=N {
                for chan in [&one, &two] {
                    db.execute(&sql, &[chan, &i.to_string()]).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut reconnects = 0;
    while seen.len() < 2 * N as usize {
        let event = stream.next().await.unwrap();
        assert_eq!(event.event, "message", "{event:?}");
        let data: Value = serde_json::from_str(&event.data).unwrap();
        let id = event.id.clone().expect("history events have an id");
        assert!(id.contains(&one) && id.contains(&two), "{id}");
        seen.push((
            data["channel"].as_str().unwrap().to_owned(),
            data["payload"].as_str().unwrap().parse().unwrap(),
        ));
        // Every 40 events, reconnect as a browser would.
        if seen.len().is_multiple_of(40) {
            reconnects += 1;
            drop(stream);
            stream = open_with(
                &server,
                Version::H1,
                &path,
                &[("last-event-id", id.as_str())],
            )
            .await;
        }
    }
    publisher.await.unwrap();
    assert!(reconnects >= 5);
    for chan in [&one, &two] {
        let got: Vec<i64> = seen
            .iter()
            .filter(|(c, _)| c == chan)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(got, (1..=N).collect::<Vec<_>>(), "{chan}");
    }
}

#[tokio::test]
async fn a_position_that_was_pruned_gets_a_gap_event_first() {
    let schema = Schema::new();
    let server = history(&schema, 3).await;
    let chan = unique("sse_hgap");
    let db = db().await;
    let sql = format!("select {}.publish($1, $2)", schema.q());
    for i in 1..=10 {
        db.execute(&sql, &[&chan, &format!("m{i}")]).await.unwrap();
    }
    let epoch = epoch_of(&schema, &chan).await;
    let path = path_for(claims("r", Some(&chan)));
    let since = format!("{epoch}:2");
    let mut stream = open_with(
        &server,
        Version::H2,
        &path,
        &[("last-event-id", since.as_str())],
    )
    .await;
    let gap = stream.next().await.unwrap();
    assert_eq!(gap.event, "gap");
    assert_eq!(
        serde_json::from_str::<Value>(&gap.data).unwrap(),
        json!({"channel": chan, "event": "Gap", "epoch": epoch, "from": 8})
    );
    assert_eq!(gap.id.as_deref(), Some(format!("{epoch}:7").as_str()));
    for i in 8..=10 {
        let event = stream.next().await.unwrap();
        assert_eq!(event.data, format!("m{i}"));
        assert_eq!(event.id, Some(format!("{epoch}:{i}")));
    }
    // `since=` in the URL reads the same values; a malformed id is a 400.
    let mut stream = open(&server, &format!("{path}?since={epoch}:9")).await;
    assert_eq!(stream.next().await.unwrap().data, "m10");
    let refused = request(
        &server,
        Version::H1,
        &path,
        &[("last-event-id", "nonsense")],
        false,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.0, 400);
    assert!(refused.1.starts_with("Invalid position"), "{}", refused.1);
}

#[tokio::test]
async fn a_stream_is_announced_on_the_meta_channel_like_a_socket() {
    let meta = unique("sse_meta");
    let mut listen = Listen::start(&meta).await;
    let server = TestServer::start(config().meta_channel(&meta)).await;
    let chan = unique("sse_announced");
    let stream = open(&server, &path_for(claims("r", Some(&chan)))).await;
    let event = |payload: &str| serde_json::from_str::<Value>(payload).unwrap();
    let opened = event(&listen.next().await.1);
    assert_eq!(opened["event"], "ConnectionOpen");
    assert_eq!(opened["payload"], chan.as_str());
    drop(stream);
    let closed = event(&listen.next().await.1);
    assert_eq!(closed["event"], "ConnectionClose");
    assert_eq!(closed["payload"], chan.as_str());
}
