//! The publishers: SQL connections running their steps, sockets sending messages;
//! each commit written in the ledger with what is known of its outcome.

use std::{sync::Arc, time::Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_websockets::{ClientBuilder, Message as WsMessage};

use super::{
    Env,
    oracle::{Commit, Message, Outcome},
    plan::{Mapping, Step},
};
use crate::common::{WAIT, now, token};

/// Runs one connection's steps; socket steps get source numbers of their own.
pub async fn run(env: Arc<Env>, source: usize, steps: Vec<Step>) {
    let mut db = connect(&env).await;
    for (n, step) in steps.into_iter().enumerate() {
        let prefix = format!("q{source}.{n}.");
        let ok = match step {
            Step::Pause(d) => {
                tokio::time::sleep(d).await;
                true
            }
            Step::Socket {
                channel,
                count,
                size,
            } => {
                socket(&env, 1000 + source * 100 + n, channel, count, size).await;
                true
            }
            Step::Session {
                channel,
                count,
                size,
            } => {
                session(&env, 1000 + source * 100 + n, channel, count, size).await;
                true
            }
            step => statement(&env, &db, source, &prefix, step).await,
        };
        if !ok {
            db = connect(&env).await;
        }
    }
}

/// A client of the run's cluster, retried while PostgreSQL is away.
async fn connect(env: &Env) -> tokio_postgres::Client {
    loop {
        if let Ok((client, conn)) = tokio_postgres::connect(&env.db, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            return client;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// One step as one statement (so one transaction); whether the connection is fine.
async fn statement(
    env: &Env,
    db: &tokio_postgres::Client,
    source: usize,
    prefix: &str,
    step: Step,
) -> bool {
    let plan = &env.plan;
    let (channels, count, size) = match &step {
        Step::Notify { channel, size } => (vec![*channel], 1, *size),
        Step::Transaction {
            channels,
            count,
            size,
        } => (channels.clone(), *count, *size),
        Step::Publish {
            channel,
            count,
            size,
        } => (vec![*channel], *count, *size),
        _ => unreachable!(),
    };
    let names: Vec<String> = channels
        .iter()
        .map(|&c| plan.channels[c].name.clone())
        .collect();
    let pad = "x".repeat(size);
    let (k, n) = (names.len() as i32, count as i32);
    let sql = match (&step, plan.mapping) {
        (Step::Publish { .. }, _) => format!(
            "select count({}.publish(($1::text[])[1 + (g - 1) % $2::int], $3::text || g || ' ' || $4::text)) \
             from generate_series(1, $5::int) g",
            env.schema
        ),
        (_, Mapping::PerChannel) => "select count(pg_notify(($1::text[])[1 + (g - 1) % $2::int], \
             $3::text || g || ' ' || $4::text)) from generate_series(1, $5::int) g"
            .to_owned(),
        (_, Mapping::Multiplexed) => format!(
            "select count(pg_notify('{}', json_build_object('channel', \
             ($1::text[])[1 + (g - 1) % $2::int], 'id', $3::text || g, 'pad', $4::text)::text)) \
             from generate_series(1, $5::int) g",
            env.listen_channel
        ),
    };
    let messages = (1..=count)
        .map(|g| Message {
            id: format!("{prefix}{g}"),
            channel: channels[(g - 1) % channels.len()],
        })
        .collect();
    let sent = Instant::now();
    let result = db.query_one(&sql, &[&names, &k, &prefix, &pad, &n]).await;
    let outcome = match &result {
        Ok(_) => Outcome::Committed(Instant::now()),
        Err(e) => {
            env.error(format!("{prefix}: {e:?}"));
            Outcome::Unknown
        }
    };
    env.ledger.record(Commit {
        source,
        messages,
        sent,
        outcome,
    });
    result.is_ok() || !db.is_closed()
}

/// `count` messages from a socket of mode `w`, then a close; certain once its
/// close is answered (pgws reads the close only after the last `NOTIFY`).
async fn socket(env: &Env, source: usize, channel: usize, count: usize, size: usize) {
    let name = &env.plan.channels[channel].name;
    let claims = serde_json::json!({"mode": "w", "channel": name, "exp": now() + 3600});
    let url = format!("ws://{}/{}", env.addr(), token(claims));
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        WAIT,
        ClientBuilder::from_uri(url.parse().unwrap()).connect(),
    )
    .await
    else {
        return; // pgws restarting: this step is skipped, nothing sent.
    };
    let pad = "x".repeat(size);
    let messages: Vec<Message> = (0..count)
        .map(|i| Message {
            id: format!("w{source}.{i}"),
            channel,
        })
        .collect();
    let sent = Instant::now();
    let mut ok = true;
    for m in &messages {
        ok &= ws
            .send(WsMessage::text(format!("{} {pad}", m.id)))
            .await
            .is_ok();
    }
    ok &= ws.close().await.is_ok();
    // The answer to our close, and no other close first.
    let answer = tokio::time::timeout(WAIT, async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Some((code, _)) = msg.as_close() {
                return u16::from(code) == 1000;
            }
        }
        false
    })
    .await;
    let outcome = match ok && answer == Ok(true) {
        true => Outcome::Committed(Instant::now()),
        false => Outcome::Unknown,
    };
    env.ledger.record(Commit {
        source,
        messages,
        sent,
        outcome,
    });
}

/// `count` publishes from a session socket, all sent before the first answer;
/// each certain at its `ack`, refused for good at its `error`.
async fn session(env: &Env, source: usize, channel: usize, count: usize, size: usize) {
    let name = &env.plan.channels[channel].name;
    let claims = serde_json::json!({"mode": "w", "channel": name, "exp": now() + 3600});
    let Some(mut ws) = session_socket(env, &format!("/{}", token(claims))).await else {
        return; // pgws restarting: this step is skipped, nothing sent.
    };
    let pad = "x".repeat(size);
    let ids: Vec<String> = (0..count).map(|i| format!("s{source}.{i}")).collect();
    let mut sent = vec![Instant::now(); count];
    let mut outcomes = vec![Outcome::Unknown; count];
    let answers = async {
        for (i, id) in ids.iter().enumerate() {
            let frame = serde_json::json!({
                "type": "publish", "id": i, "channel": name, "payload": format!("{id} {pad}"),
            });
            sent[i] = Instant::now();
            if ws.send(WsMessage::text(frame.to_string())).await.is_err() {
                return;
            }
        }
        let mut open = count;
        while open > 0 {
            let Some(Ok(msg)) = ws.next().await else {
                return;
            };
            let Some(text) = msg.as_text() else { continue };
            let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            let Some(i) = v["id"].as_u64().map(|i| i as usize).filter(|&i| i < count) else {
                continue;
            };
            outcomes[i] = match v["type"].as_str() {
                Some("ack") => Outcome::Committed(Instant::now()),
                Some("error") => {
                    env.error(format!("session publish {}: {text}", ids[i]));
                    Outcome::Failed
                }
                _ => continue,
            };
            open -= 1;
        }
    };
    let _ = tokio::time::timeout(WAIT, answers).await;
    let _ = ws.close().await;
    for ((id, sent), outcome) in ids.into_iter().zip(sent).zip(outcomes) {
        env.ledger.record(Commit {
            source,
            messages: vec![Message { id, channel }],
            sent,
            outcome,
        });
    }
}

/// A WebSocket that speaks the session protocol, or `None` when none opens.
pub async fn session_socket(
    env: &Env,
    path: &str,
) -> Option<
    tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let url = format!("ws://{}{path}", env.addr());
    let builder = ClientBuilder::from_uri(url.parse().ok()?)
        .add_header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("pgws.json"),
        )
        .ok()?;
    let (ws, response) = tokio::time::timeout(WAIT, builder.connect())
        .await
        .ok()?
        .ok()?;
    let chosen = response.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL);
    assert_eq!(
        chosen.and_then(|v| v.to_str().ok()),
        Some("pgws.json"),
        "the server must answer pgws.json"
    );
    Some(ws)
}
