//! The session protocol (subprotocol `pgws.json`, PROTOCOL.md §17) through the
//! layer, against the shared PostgreSQL, over HTTP/1.1 and RFC 8441.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use crate::common::*;
use crate::history::{Schema, history_server_with};

/// Opens a session socket at `path`, the token (if any) in the subprotocol;
/// the answer's subprotocol too.
async fn open(server: &TestServer, path: &str, jwt: Option<&str>) -> (Ws, Option<String>) {
    let offer = match jwt {
        Some(jwt) => format!("pgws.json, pgws.bearer.{jwt}"),
        None => "pgws.json".to_owned(),
    };
    let builder = ClientBuilder::from_uri(server.url(path).parse().unwrap())
        .add_header(
            HeaderName::from_static("sec-websocket-protocol"),
            HeaderValue::from_str(&offer).unwrap(),
        )
        .unwrap();
    let (ws, res) = tokio::time::timeout(WAIT, builder.connect())
        .await
        .expect("handshake timed out")
        .unwrap_or_else(|e| panic!("handshake for {path} failed: {e}"));
    let protocol = res
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, protocol)
}

/// A session socket whose token (in the path) has `claims`, on `/<jwt>`.
async fn session(server: &TestServer, claims: Value) -> Ws {
    open(server, &format!("/{}", token(claims)), None).await.0
}

fn rw(channels: &[&str]) -> Value {
    json!({"mode": "rw", "channels": channels, "exp": now() + 3600})
}

async fn send<S>(ws: &mut WebSocketStream<S>, frame: Value)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

async fn recv<S>(ws: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let text = recv_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Sends `frame` and reads the answer.
async fn ask<S>(ws: &mut WebSocketStream<S>, frame: Value) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    send(ws, frame).await;
    recv(ws).await
}

/// Nothing arrives within `d` (pings answered meanwhile).
async fn quiet(ws: &mut Ws, d: Duration) -> bool {
    tokio::time::timeout(d, async {
        loop {
            match ws.next().await {
                Some(Ok(msg)) if msg.is_text() => return msg.as_text().unwrap().to_owned(),
                Some(Ok(_)) => continue,
                _ => return String::from("<ended>"),
            }
        }
    })
    .await
    .is_err()
}

/// A publish's ack and, on a channel the socket reads, its message: in either
/// order, since the notification and the commit's answer race.
async fn ack_and_message<S>(ws: &mut WebSocketStream<S>) -> [Value; 2]
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut frames = [recv(ws).await, recv(ws).await];
    frames.sort_by_key(|f| f["type"] != "ack");
    frames
}

fn message(channel: &str, payload: &str) -> Value {
    json!({"type": "message", "channel": channel, "payload": payload})
}

// --- S1: opting in -----------------------------------------------------------

#[tokio::test]
async fn pgws_json_is_answered_and_notifications_arrive_as_message_frames() {
    let server = TestServer::start(config()).await;
    let chan = unique("s1");
    let jwt = token(claims("r", None));
    let (mut ws, protocol) = open(&server, &format!("/{chan}"), Some(&jwt)).await;
    assert_eq!(protocol.as_deref(), Some("pgws.json"));
    notify(&chan, "line one\n\"two\"").await;
    assert_eq!(recv(&mut ws).await, message(&chan, "line one\n\"two\""));
    // Offered next to `pgws`, pgws.json wins; a plain socket still gets `pgws`.
    let offer = format!("pgws, pgws.json, pgws.bearer.{jwt}");
    let req = handshake_request(&format!("/{chan}"), &[("sec-websocket-protocol", &offer)]);
    let (status, headers, _) = send_to(server.addr, req).await;
    assert_eq!(status, http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(headers["sec-websocket-protocol"], "pgws.json");
    let offer = format!("pgws, pgws.bearer.{jwt}");
    let req = handshake_request(&format!("/{chan}"), &[("sec-websocket-protocol", &offer)]);
    let (_, headers, _) = send_to(server.addr, req).await;
    assert_eq!(headers["sec-websocket-protocol"], "pgws");
}

#[tokio::test]
async fn bad_frames_get_bad_request_and_the_socket_stays_open() {
    let server = TestServer::start(config()).await;
    let mut ws = session(&server, rw(&[&unique("bad")])).await;
    for bad in [
        "not json",
        "[1,2]",
        r#""text""#,
        r#"{"id":1}"#,
        r#"{"type":7}"#,
    ] {
        ws.send(Message::text(bad.to_owned())).await.unwrap();
        let answer = recv(&mut ws).await;
        assert_eq!(answer["type"], "error", "{bad}: {answer}");
        assert_eq!(answer["code"], "bad_request", "{bad}");
    }
    let answer = ask(&mut ws, json!({"type": "dance", "id": "x"})).await;
    assert_eq!(
        (answer["code"].as_str(), answer["id"].as_str()),
        (Some("bad_request"), Some("x"))
    );
    ws.send(Message::binary(Bytes::from_static(b"{\"type\":\"ping\"}")))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["code"], "bad_request");
    let answer = ask(&mut ws, json!({"type": "publish", "id": 2})).await;
    assert_eq!(
        answer,
        json!({"type":"error","id":2,"code":"bad_request","message":answer["message"]})
    );
    // Still open: ids are echoed as given, strings and numbers alike.
    assert_eq!(
        ask(&mut ws, json!({"type": "ping", "id": 6})).await,
        json!({"type":"pong","id":6})
    );
    assert_eq!(
        ask(&mut ws, json!({"type": "ping", "id": "é"})).await,
        json!({"type":"pong","id":"é"})
    );
    assert_eq!(
        ask(&mut ws, json!({"type": "ping"})).await,
        json!({"type":"pong"})
    );
}

#[tokio::test]
async fn a_claims_only_url_granting_only_patterns_starts_with_no_channel() {
    let server = TestServer::start(config()).await;
    let prefix = unique("pat");
    let claims = json!({"mode": "r", "channels": [format!("{prefix}-*")]});
    // A plain socket is refused, as before.
    let (status, body) = server
        .handshake(&format!("/{}", token(claims.clone())))
        .await;
    assert_eq!(status, 403, "{body}");
    let mut ws = session(&server, claims).await;
    let room = format!("{prefix}-7");
    let answer = ask(&mut ws, json!({"type":"subscribe","id":1,"channel":room})).await;
    assert_eq!(answer, json!({"type":"subscribed","id":1,"channel":room}));
    notify(&room, "hi").await;
    assert_eq!(recv(&mut ws).await, message(&room, "hi"));
    // The pattern grants its prefix only.
    let other = format!("{prefix}7");
    let answer = ask(&mut ws, json!({"type":"subscribe","id":2,"channel":other})).await;
    assert_eq!(
        (answer["code"].as_str(), answer["id"].as_i64()),
        (Some("forbidden"), Some(2))
    );
}

// --- S3: publishing ----------------------------------------------------------

#[tokio::test]
async fn publishes_are_acked_in_order_and_committed_in_order() {
    let server = TestServer::start(config()).await;
    let chan = unique("pub");
    let mut listen = Listen::start(&chan).await;
    let mut ws = session(&server, rw(&[&chan])).await;
    // Pipelined: the next goes before the previous answer.
    for i in 0..40 {
        let payload = if i % 2 == 0 {
            json!(format!("m{i}"))
        } else {
            json!({"n": i, "l": [1, 2]})
        };
        send(
            &mut ws,
            json!({"type":"publish","id":i,"channel":chan,"payload":payload}),
        )
        .await;
    }
    let mut acks = Vec::new();
    let mut echoed = Vec::new();
    while acks.len() < 40 || echoed.len() < 40 {
        let frame = recv(&mut ws).await;
        match frame["type"].as_str() {
            Some("ack") => acks.push(frame["id"].as_i64().unwrap()),
            Some("message") => echoed.push(frame["payload"].as_str().unwrap().to_owned()),
            _ => panic!("{frame}"),
        }
    }
    assert_eq!(acks, (0..40).collect::<Vec<_>>());
    for (i, echo) in echoed.iter().enumerate() {
        let (_, envelope) = listen.next().await;
        let envelope: Value = serde_json::from_str(&envelope).unwrap();
        let expected = if i % 2 == 0 {
            format!("m{i}")
        } else {
            format!(r#"{{"l":[1,2],"n":{i}}}"#)
        };
        assert_eq!(envelope["payload"], expected.as_str(), "{envelope}");
        assert_eq!(envelope["event"], "WebsocketMessage");
        assert_eq!(echo.as_str(), serde_json::to_string(&envelope).unwrap());
    }
    // The channel may be left out when the token grants exactly one.
    send(&mut ws, json!({"type":"publish","id":"last","payload":"x"})).await;
    let [ack, echo] = ack_and_message(&mut ws).await;
    assert_eq!(ack, json!({"type":"ack","id":"last"}));
    assert_eq!(echo["channel"], chan.as_str());
}

#[tokio::test]
async fn failed_publishes_are_answered_deliver_nothing_and_keep_the_socket() {
    let server = TestServer::start(config()).await;
    let chan = unique("fail");
    let other = unique("fail_other");
    let mut listen = Listen::start(&chan).await;
    let mut listen_other = Listen::start(&other).await;
    let mut ws = session(&server, rw(&[&chan, &format!("{chan}-*")])).await;
    let code = |v: &Value| v["code"].as_str().map(str::to_owned);
    let a = ask(
        &mut ws,
        json!({"type":"publish","id":1,"channel":other,"payload":"x"}),
    )
    .await;
    assert_eq!(code(&a).as_deref(), Some("forbidden"));
    let big = "x".repeat(8000);
    let a = ask(
        &mut ws,
        json!({"type":"publish","id":2,"channel":chan,"payload":big}),
    )
    .await;
    assert_eq!(code(&a).as_deref(), Some("too_big"));
    // Two channels granted (one a pattern): the channel must be named.
    let a = ask(&mut ws, json!({"type":"publish","id":3,"payload":"x"})).await;
    assert_eq!(code(&a).as_deref(), Some("bad_request"));
    let a = ask(
        &mut ws,
        json!({"type":"publish","id":4,"channel":"","payload":"x"}),
    )
    .await;
    assert_eq!(code(&a).as_deref(), Some("bad_request"));
    // A read-only token: forbidden, never 1008.
    let mut reader = session(&server, json!({"mode":"r","channel":chan})).await;
    let a = ask(&mut reader, json!({"type":"publish","id":5,"payload":"x"})).await;
    assert_eq!(
        (code(&a).as_deref(), a["id"].as_i64()),
        (Some("forbidden"), Some(5))
    );
    assert_eq!(
        ask(&mut reader, json!({"type":"ping"})).await["type"],
        "pong"
    );
    send(
        &mut ws,
        json!({"type":"publish","id":6,"channel":chan,"payload":"good"}),
    )
    .await;
    assert_eq!(
        ack_and_message(&mut ws).await[0],
        json!({"type":"ack","id":6})
    );
    let (_, envelope) = listen.next().await;
    assert!(envelope.contains(r#""payload":"good""#), "{envelope}");
    assert!(listen.quiet_for(Duration::from_millis(200)).await);
    assert!(listen_other.quiet_for(Duration::from_millis(10)).await);
}

#[tokio::test]
async fn a_publish_the_database_cannot_take_is_unavailable_never_1013() {
    // Nothing listens on port 1: a write-only socket is accepted all the same.
    let server = TestServer::start(
        config().database_url("postgres://postgres@127.0.0.1:1/postgres?connect_timeout=1"),
    )
    .await;
    let chan = unique("down");
    let mut ws = session(&server, json!({"mode":"w","channel":chan})).await;
    let a = ask(&mut ws, json!({"type":"publish","id":1,"payload":"x"})).await;
    assert_eq!(
        (a["type"].as_str(), a["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
    assert_eq!(
        ask(&mut ws, json!({"type":"ping","id":2})).await,
        json!({"type":"pong","id":2})
    );
}

#[tokio::test]
async fn a_publish_to_a_history_channel_is_kept_before_its_ack() {
    let schema = Schema::new();
    let server = history_server_with(&schema, config().history("keep*")).await;
    let chan = unique("keep");
    let mut ws = session(&server, rw(&[&chan])).await;
    send(&mut ws, json!({"type":"publish","id":1,"payload":{"k":1}})).await;
    let frames = ack_and_message(&mut ws).await;
    assert_eq!(frames[0], json!({"type":"ack","id":1}));
    assert_eq!(frames[1]["type"], "message");
    assert_eq!(frames[1]["offset"], 1);
    assert!(frames[1]["epoch"].is_string());
    let kept: i64 = db()
        .await
        .query_one(
            &format!("select count(*) from {}.messages", schema.q()),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
}

/// Publishes while the store is locked: the server reads at most
/// `PGWS_MAX_IN_FLIGHT` of them and then nothing more, so a ping sent behind
/// them is not answered until one commits; once the lock goes every publish of
/// a flood is acked, in order.
#[tokio::test]
async fn a_flood_of_publishes_is_slowed_not_buffered() {
    let schema = Schema::new();
    let server = history_server_with(&schema, config().history("flood*").max_in_flight(4)).await;
    let chan = unique("flood");
    let mut ws = session(&server, json!({"mode":"w","channel":chan})).await;
    // The channel's row exists once it has a message.
    assert_eq!(
        ask(&mut ws, json!({"type":"publish","id":-1,"payload":"x"})).await["type"],
        "ack"
    );
    let mut lock = db().await;
    let tx = lock.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "lock table {}.channels in access exclusive mode",
        schema.q()
    ))
    .await
    .unwrap();
    for i in 0..4 {
        send(&mut ws, json!({"type":"publish","id":i,"payload":"p"})).await;
    }
    send(&mut ws, json!({"type":"ping","id":"behind"})).await;
    assert!(
        quiet(&mut ws, Duration::from_millis(1500)).await,
        "the ping behind 4 publishes was read"
    );
    // A flood behind it, read as room is made.
    let payload = "p".repeat(1000);
    let (mut sink, mut stream) = ws.split();
    let flood = tokio::spawn(async move {
        for i in 4..400 {
            let frame = json!({"type":"publish","id":i,"payload":payload});
            sink.send(Message::text(frame.to_string())).await.unwrap();
        }
        sink
    });
    tx.commit().await.unwrap();
    let mut answers = Vec::new();
    while answers.len() < 401 {
        let frame = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no answer after {answers:?}"))
            .expect("socket ended")
            .expect("socket failed");
        let Some(text) = frame.as_text() else {
            continue;
        };
        let frame: Value = serde_json::from_str(text).unwrap();
        answers.push(frame);
    }
    let _sink = flood.await.unwrap();
    // The pong comes once the first publish is answered, and before the fifth.
    let pong = answers.iter().position(|f| f["type"] == "pong").unwrap();
    assert!((1..=4).contains(&pong), "pong at {pong}: {answers:?}");
    let acks: Vec<i64> = answers
        .iter()
        .filter(|f| f["type"] == "ack")
        .map(|f| f["id"].as_i64().unwrap())
        .collect();
    assert_eq!(acks, (0..400).collect::<Vec<_>>());
}

// --- S4: changing channels ---------------------------------------------------

#[tokio::test]
async fn subscribe_and_unsubscribe_answer_and_bound_the_channels_messages() {
    let server = TestServer::start(config().max_channels(2)).await;
    let prefix = unique("sub");
    let (a, b, c) = (
        format!("{prefix}-a"),
        format!("{prefix}-b"),
        format!("{prefix}-c"),
    );
    let mut ws = session(
        &server,
        json!({"mode":"r","channels":[a, format!("{prefix}-*")]}),
    )
    .await;
    let answer = ask(&mut ws, json!({"type":"subscribe","id":1,"channel":b})).await;
    assert_eq!(answer, json!({"type":"subscribed","id":1,"channel":b}));
    // Listened to by then: a NOTIFY right after the answer arrives.
    notify(&b, "to b").await;
    assert_eq!(recv(&mut ws).await, message(&b, "to b"));
    // Again: answered, nothing changes.
    let answer = ask(&mut ws, json!({"type":"subscribe","id":2,"channel":b})).await;
    assert_eq!(answer, json!({"type":"subscribed","id":2,"channel":b}));
    let answer = ask(&mut ws, json!({"type":"subscribe","id":3,"channel":c})).await;
    assert_eq!(answer["code"], "too_many");
    // Unsubscribe: every message of b before the answer, none after.
    for i in 0..50 {
        notify(&b, &format!("b{i}")).await;
    }
    send(&mut ws, json!({"type":"unsubscribe","id":4,"channel":b})).await;
    let mut got = 0;
    loop {
        let frame = recv(&mut ws).await;
        if frame["type"] == "unsubscribed" {
            assert_eq!(frame, json!({"type":"unsubscribed","id":4,"channel":b}));
            break;
        }
        assert_eq!(frame, message(&b, &format!("b{got}")));
        got += 1;
    }
    notify(&b, "gone").await;
    notify(&a, "still").await;
    assert_eq!(recv(&mut ws).await, message(&a, "still"));
    let listening = server.layer.listening_channels().await.unwrap();
    assert!(!listening.contains(&b), "{listening:?}");
}

#[tokio::test]
async fn a_subscribe_on_a_history_channel_replays_then_goes_live_without_a_seam() {
    let schema = Schema::new();
    let server = history_server_with(&schema, config().history("hs*")).await;
    let chan = unique("hs");
    let db = db().await;
    let publish = format!("select {}.publish($1, $2)", schema.q());
    for i in 1..=5 {
        db.query_one(&publish, &[&chan, &format!("old{i}")])
            .await
            .unwrap();
    }
    let epoch: String = db
        .query_one(
            &format!(
                "select epoch from {}.channels where channel = $1",
                schema.q()
            ),
            &[&chan],
        )
        .await
        .unwrap()
        .get(0);
    let mut ws = session(&server, json!({"mode":"r","channels":["hs*"]})).await;
    // Messages published while the subscribe is answered and replayed.
    let writer = {
        let (chan, publish) = (chan.clone(), publish.clone());
        tokio::spawn(async move {
            let db = crate::common::db().await;
            for i in 6..=30 {
                db.query_one(&publish, &[&chan, &format!("new{i}")])
                    .await
                    .unwrap();
            }
        })
    };
    let since = format!("{epoch}:2");
    let answer = ask(
        &mut ws,
        json!({"type":"subscribe","id":1,"channel":chan,"since":since}),
    )
    .await;
    assert_eq!(answer, json!({"type":"subscribed","id":1,"channel":chan}));
    writer.await.unwrap();
    for offset in 3..=30 {
        let frame = recv(&mut ws).await;
        assert_eq!(frame["offset"], offset, "{frame}");
        assert_eq!(frame["epoch"], epoch.as_str());
    }
    assert!(quiet(&mut ws, Duration::from_millis(300)).await);
    // A position that cannot be honoured: a gap first.
    let other = unique("hs");
    db.query_one(&publish, &[&other, &"one"]).await.unwrap();
    let answer = ask(
        &mut ws,
        json!({"type":"subscribe","id":2,"channel":other,"since":"NOPE:9"}),
    )
    .await;
    assert_eq!(answer["type"], "subscribed");
    let gap = recv(&mut ws).await;
    assert_eq!(
        (gap["type"].as_str(), gap["from"].as_i64()),
        (Some("gap"), Some(1)),
        "{gap}"
    );
    assert_eq!(recv(&mut ws).await["payload"], "one");
    // history=n, and since on a channel without history is a bad request.
    let answer = ask(&mut ws, json!({"type":"unsubscribe","id":3,"channel":chan})).await;
    assert_eq!(answer["type"], "unsubscribed");
    let answer = ask(
        &mut ws,
        json!({"type":"subscribe","id":4,"channel":chan,"history":2}),
    )
    .await;
    assert_eq!(answer["type"], "subscribed");
    assert_eq!(recv(&mut ws).await["payload"], "new29");
    assert_eq!(recv(&mut ws).await["payload"], "new30");
}

// --- S5: refresh -------------------------------------------------------------

#[tokio::test]
async fn a_refresh_outlives_the_first_token_and_drops_what_it_no_longer_grants() {
    let server = TestServer::start(config().expiry_notice(Duration::ZERO)).await;
    let prefix = unique("ref");
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let first = json!({"mode":"rw","channels":[&a, &b],"sub":"alice","exp": now() + 2,"v":1});
    let mut ws = session(&server, first).await;
    let second = json!({"mode":"rw","channel":&a,"sub":"alice","exp": now() + 3600,"v":2});
    let answer = ask(
        &mut ws,
        json!({"type":"refresh","id":1,"token":token(second.clone())}),
    )
    .await;
    // b first (no longer granted), then the answer.
    assert_eq!(
        answer,
        json!({"type":"unsubscribed","channel":b,"reason":"not granted"})
    );
    assert_eq!(
        recv(&mut ws).await,
        json!({"type":"refreshed","id":1,"exp":second["exp"]})
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Past the first token's exp: still open, on a only, with the new claims.
    notify(&b, "not for you").await;
    let mut listen = Listen::start(&a).await;
    send(&mut ws, json!({"type":"publish","id":2,"payload":"after"})).await;
    let [ack, echo] = ack_and_message(&mut ws).await;
    assert_eq!(ack, json!({"type":"ack","id":2}));
    assert_eq!(echo["channel"], a.as_str());
    let (_, envelope) = listen.next().await;
    let envelope: Value = serde_json::from_str(&envelope).unwrap();
    assert_eq!(envelope["userClaims"]["v"], 2);
    let answer = ask(&mut ws, json!({"type":"subscribe","id":3,"channel":b})).await;
    assert_eq!(answer["code"], "forbidden");
}

#[tokio::test]
async fn a_refused_refresh_changes_nothing_and_the_old_exp_still_closes() {
    let server = TestServer::start(config()).await;
    let chan = unique("refuse");
    let exp = now() + 3;
    let mut ws = session(
        &server,
        json!({"mode":"r","channel":chan,"sub":"alice","exp":exp}),
    )
    .await;
    // The notice comes at once: exp is under 30 s away.
    assert_eq!(recv(&mut ws).await, json!({"type":"expiring","exp":exp}));
    let refused = [
        token(json!({"mode":"r","channel":chan,"sub":"bob","exp":now() + 3600})),
        token(json!({"mode":"r","channel":chan,"exp":now() + 3600})),
        token(json!({"mode":"r","channel":chan,"sub":"alice","exp":now() - 10})),
        token_with(
            &json!({"mode":"r","channel":chan,"sub":"alice"}),
            b"another-secret-another-secret-xx",
        ),
        "a.b.c".to_owned(),
    ];
    for (i, jwt) in refused.iter().enumerate() {
        let answer = ask(&mut ws, json!({"type":"refresh","id":i,"token":jwt})).await;
        assert_eq!(
            (answer["code"].as_str(), answer["id"].as_u64()),
            (Some("unauthorized"), Some(i as u64)),
            "{answer}"
        );
    }
    notify(&chan, "still here").await;
    assert_eq!(recv(&mut ws).await, message(&chan, "still here"));
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 3001);
}

#[tokio::test]
async fn the_expiring_notice_comes_once_per_exp() {
    let server = TestServer::start(config().expiry_notice(Duration::from_secs(3600))).await;
    let chan = unique("notice");
    let exp = now() + 1800;
    let mut ws = session(
        &server,
        json!({"mode":"r","channel":chan,"sub":"s","exp":exp}),
    )
    .await;
    assert_eq!(recv(&mut ws).await, json!({"type":"expiring","exp":exp}));
    // The same exp again: no second notice; a new exp: one more.
    let same = token(json!({"mode":"r","channel":chan,"sub":"s","exp":exp}));
    assert_eq!(
        ask(&mut ws, json!({"type":"refresh","token":same})).await["type"],
        "refreshed"
    );
    assert!(quiet(&mut ws, Duration::from_millis(300)).await);
    let later = exp + 60;
    let next = token(json!({"mode":"r","channel":chan,"sub":"s","exp":later}));
    assert_eq!(
        ask(&mut ws, json!({"type":"refresh","token":next})).await["type"],
        "refreshed"
    );
    assert_eq!(recv(&mut ws).await, json!({"type":"expiring","exp":later}));
}

// --- Leaks -------------------------------------------------------------------

/// The listener's gauges once they settle to `channels` channels and no join.
async fn settled(server: &TestServer, channels: u64) {
    tokio::time::timeout(WAIT, async {
        loop {
            let stats = server.layer.stats();
            if stats.channels_listened == channels && stats.pending_joins == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("gauges never settled: {:?}", server.layer.stats()));
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test]
async fn ten_thousand_subscribes_on_one_socket_leak_nothing() {
    let server = TestServer::start(config()).await;
    let prefix = unique("loop");
    let mut ws = session(
        &server,
        json!({"mode":"r","channels":[format!("{prefix}-*")]}),
    )
    .await;
    settled(&server, 0).await;
    let before = resident_bytes();
    for i in 0..10_000 {
        let chan = format!("{prefix}-{}", i % 7);
        send(&mut ws, json!({"type":"subscribe","channel":chan})).await;
        send(&mut ws, json!({"type":"unsubscribe","channel":chan})).await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
        assert_eq!(recv(&mut ws).await["type"], "unsubscribed");
    }
    settled(&server, 0).await;
    let listening = server.layer.listening_channels().await.unwrap();
    assert!(
        !listening.iter().any(|c| c.starts_with(&prefix)),
        "{listening:?}"
    );
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "resident memory grew by {grown} bytes");
    assert_eq!(ask(&mut ws, json!({"type":"ping"})).await["type"], "pong");
}

#[tokio::test]
async fn a_thousand_sockets_subscribing_at_once_leak_nothing() {
    let server = TestServer::start(config()).await;
    let prefix = unique("many");
    let claims = json!({"mode":"r","channels":[format!("{prefix}-*")]});
    let mut sockets = Vec::new();
    for _ in 0..1000 {
        sockets.push(session(&server, claims.clone()).await);
    }
    let open = server.layer.stats().open_sockets;
    let runs = sockets.into_iter().enumerate().map(|(i, mut ws)| {
        let prefix = prefix.clone();
        tokio::spawn(async move {
            for round in 0..5 {
                let chan = format!("{prefix}-{}", (i + round) % 10);
                let a = ask(&mut ws, json!({"type":"subscribe","channel":chan})).await;
                assert_eq!(a["type"], "subscribed", "{a}");
                let a = ask(&mut ws, json!({"type":"unsubscribe","channel":chan})).await;
                assert_eq!(a["type"], "unsubscribed", "{a}");
            }
            ws
        })
    });
    let sockets: Vec<Ws> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    settled(&server, 0).await;
    assert_eq!(server.layer.stats().open_sockets, open);
    let listening = server.layer.listening_channels().await.unwrap();
    assert!(
        !listening.iter().any(|c| c.starts_with(&prefix)),
        "{listening:?}"
    );
    drop(sockets);
}

// --- HTTP/2 ------------------------------------------------------------------

#[tokio::test]
async fn a_session_works_over_rfc_8441() {
    use http_body_util::{BodyExt, Empty};
    use hyper::ext::Protocol;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::Layer;

    let layer = pgws::PgWsLayer::new(config().build().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = layer.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let svc = serving.layer(tower::service_fn(
                |_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(Bytes::new()),
                    ))
                },
            ));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .enable_connect_protocol()
                    .serve_connection(
                        TokioIo::new(tcp),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
            });
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let prefix = unique("h2s");
    let jwt = token(json!({"mode":"rw","channels":[format!("{prefix}-*")]}));
    let mut req = http::Request::connect(format!("http://{addr}/"))
        .version(http::Version::HTTP_2)
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-protocol",
            format!("pgws.json, pgws.bearer.{jwt}"),
        )
        .body(Empty::new())
        .unwrap();
    req.extensions_mut()
        .insert(Protocol::from_static("websocket"));
    h2.ready().await.unwrap();
    let mut res = tokio::time::timeout(WAIT, h2.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(res.headers()["sec-websocket-protocol"], "pgws.json");
    let upgraded = hyper::upgrade::on(&mut res).await.unwrap();
    let mut ws = ClientBuilder::new().take_over(TokioIo::new(upgraded));
    let chan = format!("{prefix}-1");
    let a = ask(&mut ws, json!({"type":"subscribe","id":1,"channel":chan})).await;
    assert_eq!(a, json!({"type":"subscribed","id":1,"channel":chan}));
    let a = ask(
        &mut ws,
        json!({"type":"publish","id":2,"channel":chan,"payload":"over h2"}),
    )
    .await;
    let b = recv(&mut ws).await;
    let mut frames = [a, b];
    frames.sort_by_key(|f| f["type"].as_str().unwrap().to_owned());
    assert_eq!(frames[0], json!({"type":"ack","id":2}));
    let envelope: Value = serde_json::from_str(frames[1]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(envelope["payload"], "over h2");
    let _ = res.into_body().collect().await;
}

// --- Pattern grants, in every URL form ---------------------------------------

#[tokio::test]
async fn a_pattern_grants_only_channels_with_its_prefix_on_plain_sockets_too() {
    let server = TestServer::start(config()).await;
    let prefix = unique("grant");
    let (lit, room) = (format!("{prefix}-lit"), format!("{prefix}-room-7"));
    let jwt = token(json!({"mode":"r","channels":[&lit, format!("{prefix}-room-*")]}));
    // A path channel matching the pattern is granted; one that does not is not.
    let mut by_path = server.connect(&format!("/{room}/{jwt}")).await;
    for refused in [
        format!("{prefix}-room"),
        format!("{prefix}-roo"),
        format!("x{prefix}-room-7"),
    ] {
        let (status, body) = server.handshake(&format!("/{refused}/{jwt}")).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (403, "No allowed channels"),
            "{refused}"
        );
    }
    // A claims-only URL starts with the names only.
    let mut by_claims = server.connect(&format!("/{jwt}")).await;
    notify(&room, "to room").await;
    notify(&lit, "to lit").await;
    assert_eq!(recv_text(&mut by_path).await, "to room");
    assert_eq!(recv_text(&mut by_claims).await, "to lit");
    // The singular claim is always a literal name.
    let literal = token(json!({"mode":"r","channel":format!("{prefix}-room-*")}));
    let (status, _) = server.handshake(&format!("/{room}/{literal}")).await;
    assert_eq!(status, 403);
    let mut star = session(
        &server,
        json!({"mode":"r","channel":format!("{prefix}-room-*")}),
    )
    .await;
    let a = ask(&mut star, json!({"type":"subscribe","channel":room})).await;
    assert_eq!(a["code"], "forbidden");
}

#[tokio::test]
async fn subscribes_that_cannot_be_taken_are_answered() {
    let schema = Schema::new();
    let server = history_server_with(&schema, config().history("only-h*")).await;
    let prefix = unique("cannot");
    let mut writer = session(
        &server,
        json!({"mode":"w","channels":[format!("{prefix}*")]}),
    )
    .await;
    let a = ask(
        &mut writer,
        json!({"type":"subscribe","id":1,"channel":format!("{prefix}1")}),
    )
    .await;
    assert_eq!(
        (a["code"].as_str(), a["id"].as_i64()),
        (Some("forbidden"), Some(1))
    );
    let mut ws = session(&server, json!({"mode":"r","channels":["*"]})).await;
    let plain = format!("{prefix}-plain");
    let a = ask(
        &mut ws,
        json!({"type":"subscribe","id":2,"channel":plain,"since":"AAAA:1"}),
    )
    .await;
    assert_eq!(a["code"], "bad_request");
    let a = ask(
        &mut ws,
        json!({"type":"subscribe","id":3,"channel":plain,"history":-1}),
    )
    .await;
    assert_eq!(a["code"], "bad_request");
    let a = ask(
        &mut ws,
        json!({"type":"subscribe","id":4,"channel":"x".repeat(64)}),
    )
    .await;
    assert_eq!(a["code"], "bad_request");
    let a = ask(
        &mut ws,
        json!({"type":"unsubscribe","id":5,"channel":plain}),
    )
    .await;
    assert_eq!(a, json!({"type":"unsubscribed","id":5,"channel":plain}));
    // Nothing of it was subscribed.
    notify(&plain, "no").await;
    assert!(quiet(&mut ws, Duration::from_millis(200)).await);
}

#[tokio::test]
async fn a_session_handshake_with_history_replays_as_session_frames() {
    let schema = Schema::new();
    let server = history_server_with(&schema, config().history("hh*")).await;
    let chan = unique("hh");
    let db = db().await;
    let publish = format!("select {}.publish($1, $2)", schema.q());
    for i in 1..=3 {
        db.query_one(&publish, &[&chan, &format!("m{i}")])
            .await
            .unwrap();
    }
    let jwt = token(json!({"mode":"r","channel":chan}));
    let (mut ws, _) = open(&server, &format!("/{chan}?history=2"), Some(&jwt)).await;
    for (offset, payload) in [(2, "m2"), (3, "m3")] {
        let frame = recv(&mut ws).await;
        assert_eq!(
            (frame["type"].as_str(), frame["offset"].as_i64()),
            (Some("message"), Some(offset))
        );
        assert_eq!(frame["payload"], payload);
    }
    db.query_one(&publish, &[&chan, &"m4"]).await.unwrap();
    assert_eq!(recv(&mut ws).await["payload"], "m4");
}
