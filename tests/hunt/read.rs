//! The readers: WebSockets and event streams that record every frame of each
//! connection, and connect again after an ending the server chose.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{ClientBuilder, WebSocketStream};

use super::{
    Env,
    oracle::{End, Got, Life, id_of},
    plan::{Behaviour, Reader, Transport},
};
use crate::common::{now, token};

/// Longer than any replay the hunt asks for: "everything kept".
const EVERYTHING: u32 = 1_000_000;

/// A reader's lives, one per connection, until the run stops it.
pub async fn run(env: Arc<Env>, index: usize, reader: Reader) -> Vec<Life> {
    let mut state = State::default();
    let mut lives = Vec::new();
    let begun = std::time::Instant::now();
    if let Behaviour::Late(after) = reader.behaviour {
        tokio::time::sleep(after).await;
    }
    loop {
        if env.stopped() {
            return lives;
        }
        let Some(life) = one_life(&env, index, &reader, &mut state, begun).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let again = matches!(life.end, End::Closed(..) | End::Dropped(_));
        lives.push(life);
        if !again || matches!(reader.behaviour, Behaviour::Leaves(_)) {
            return lives;
        }
    }
}

/// What a resuming reader carries from one connection to the next.
#[derive(Default)]
struct State {
    /// Per channel name: the last position handed on.
    positions: HashMap<String, (String, i64)>,
    /// An event stream's last event id.
    last_event_id: Option<String>,
}

/// One connection; `None` when it could not be opened.
async fn one_life(
    env: &Env,
    index: usize,
    reader: &Reader,
    state: &mut State,
    begun: std::time::Instant,
) -> Option<Life> {
    let names: Vec<&str> = reader
        .channels
        .iter()
        .map(|&c| env.plan.channels[c].name.as_str())
        .collect();
    let claims = serde_json::json!({"mode": "r", "channels": names, "exp": now() + 3600});
    let positioned = reader.behaviour == Behaviour::Resumes;
    let mut path = format!("/{}", token(claims));
    if positioned {
        path.push_str(&query(&names, state, reader.transport));
    }
    let slow = reader.behaviour == Behaviour::Slow;
    let mut life = Life {
        reader: index,
        channels: reader.channels.clone(),
        opened: std::time::Instant::now(),
        positioned,
        sse: reader.transport == Transport::Sse,
        session: reader.transport == Transport::Session,
        left: Vec::new(),
        got: Vec::new(),
        gaps: 0,
        end: End::Open,
    };
    let leave_at = match reader.behaviour {
        Behaviour::Leaves(after) => Some(begun + after),
        _ => None,
    };
    match reader.transport {
        Transport::Ws | Transport::Session => {
            let session = reader.transport == Transport::Session;
            let mut ws = open_ws(env, &path, slow, session).await?;
            life.opened = std::time::Instant::now();
            read_ws(env, &mut ws, &mut life, state, leave_at, slow).await;
        }
        Transport::Sse => {
            let last = state.last_event_id.clone().filter(|_| positioned);
            let body = open_sse(env, &path, last, slow).await?;
            life.opened = std::time::Instant::now();
            read_sse(env, body, &mut life, state, leave_at, slow).await;
        }
    }
    Some(life)
}

/// `since` for each channel with a position, `history` for the others.
fn query(names: &[&str], state: &State, transport: Transport) -> String {
    let mut parts = vec![format!("history={EVERYTHING}")];
    if transport != Transport::Sse {
        for name in names {
            if let Some((epoch, offset)) = state.positions.get(*name) {
                parts.push(format!("since={epoch}:{offset}:{name}"));
            }
        }
    }
    format!("?{}", parts.join("&"))
}

async fn tcp(env: &Env, slow: bool) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    if slow {
        socket.set_recv_buffer_size(4096).ok()?;
    }
    socket.connect(env.addr()).await.ok()
}

async fn open_ws(
    env: &Env,
    path: &str,
    slow: bool,
    session: bool,
) -> Option<WebSocketStream<TcpStream>> {
    let uri = format!("ws://{}{path}", env.addr()).parse().ok()?;
    let stream = tcp(env, slow).await?;
    let mut builder = ClientBuilder::from_uri(uri);
    if session {
        let protocol = http::HeaderValue::from_static("pgws.json");
        builder = builder
            .add_header(http::header::SEC_WEBSOCKET_PROTOCOL, protocol)
            .ok()?;
    }
    let (ws, response) = tokio::time::timeout(Duration::from_secs(10), builder.connect_on(stream))
        .await
        .ok()?
        .ok()?;
    let chosen = response.headers().get(http::header::SEC_WEBSOCKET_PROTOCOL);
    let chosen = chosen.and_then(|v| v.to_str().ok());
    assert_eq!(
        chosen == Some("pgws.json"),
        session,
        "subprotocol answered: {chosen:?}"
    );
    Some(ws)
}

/// Waits while a slow reader must not read: until publishing is over.
async fn hold(env: &Env, slow: bool) {
    if slow {
        env.published().await;
    }
}

async fn read_ws(
    env: &Env,
    ws: &mut WebSocketStream<TcpStream>,
    life: &mut Life,
    state: &mut State,
    leave_at: Option<std::time::Instant>,
    slow: bool,
) {
    hold(env, slow).await;
    let leave = sleep_until_opt(leave_at);
    tokio::pin!(leave);
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            () = env.stop() => {
                life.end = End::Open;
                return;
            }
            () = &mut leave => {
                life.end = End::Left;
                let _ = futures_util::SinkExt::close(ws).await;
                return;
            }
        };
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return life.end = End::Dropped(e.to_string()),
            None => return life.end = End::Dropped("stream ended".into()),
        };
        if let Some((code, reason)) = msg.as_close() {
            life.end = End::Closed(code.into(), reason.to_owned());
            return;
        }
        if let Some(text) = msg.as_text() {
            match life.session {
                true => record_session(env, life, state, text),
                false => record(env, life, state, text, None),
            }
        }
    }
}

/// A session frame (PROTOCOL.md §17): messages and gaps are recorded, the other
/// answers and notices are not deliveries.
fn record_session(env: &Env, life: &mut Life, state: &mut State, text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_default();
    match v["type"].as_str() {
        Some("gap") => life.gaps += 1,
        Some("message") => {
            env.frame_seen();
            let channel = v["channel"].as_str().unwrap_or_default();
            let offset = match (v["epoch"].as_str(), v["offset"].as_i64()) {
                (Some(epoch), Some(n)) => {
                    let position = (epoch.to_owned(), n);
                    state.positions.insert(channel.to_owned(), position);
                    Some((channel.to_owned(), n))
                }
                _ => None,
            };
            let payload = v["payload"].as_str().unwrap_or_default();
            let id = id_of(payload).unwrap_or_else(|| format!("<unreadable {text:.40}>"));
            life.got.push(Got { id, offset });
        }
        // The server let go of a channel (a replay that failed, say).
        Some("unsubscribed" | "error") => {
            let name = v["channel"].as_str().unwrap_or_default();
            let channel = life
                .channels
                .iter()
                .find(|&&c| env.plan.channels[c].name == name);
            life.left.extend(channel.copied());
        }
        _ => {}
    }
}

/// A frame's id and position, into the life and the state.
fn record(env: &Env, life: &mut Life, state: &mut State, text: &str, sse_id: Option<&str>) {
    env.frame_seen();
    let mut offset = None;
    if life.positioned
        && let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text)
    {
        if o.get("event").and_then(Value::as_str) == Some("Gap") {
            life.gaps += 1;
            return;
        }
        if let (Some(c), Some(e), Some(n)) = (
            o.get("channel").and_then(Value::as_str),
            o.get("epoch").and_then(Value::as_str),
            o.get("offset").and_then(Value::as_i64),
        ) {
            offset = Some((c.to_owned(), n));
            state.positions.insert(c.to_owned(), (e.to_owned(), n));
        }
    }
    // One history channel on an event stream: the payload is bare, the id says where.
    if life.positioned
        && offset.is_none()
        && let Some((epoch, n)) = sse_id.and_then(|id| id.split_once(':'))
        && let (Ok(n), [channel]) = (n.parse::<i64>(), life.channels.as_slice())
    {
        let name = env.plan.channels[*channel].name.clone();
        state.positions.insert(name.clone(), (epoch.to_owned(), n));
        offset = Some((name, n));
    }
    let id = id_of(text).unwrap_or_else(|| format!("<unreadable {text:.40}>"));
    life.got.push(Got { id, offset });
}

type Body = hyper::body::Incoming;

async fn open_sse(env: &Env, path: &str, last: Option<String>, slow: bool) -> Option<Body> {
    let stream = tcp(env, slow).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("http://{}{path}", env.addr()))
        .header("accept", "text/event-stream")
        .header("host", env.addr().to_string());
    if let Some(last) = last {
        req = req.header("last-event-id", last);
    }
    let req = req.body(Empty::<Bytes>::new()).ok()?;
    let res = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .ok()?
        .ok()?;
    (res.status() == 200).then(|| res.into_body())
}

/// One event stream to its end, parsed as `EventSource` does (the parts pgws sends).
async fn read_sse(
    env: &Env,
    mut body: Body,
    life: &mut Life,
    state: &mut State,
    leave_at: Option<std::time::Instant>,
    slow: bool,
) {
    hold(env, slow).await;
    let leave = sleep_until_opt(leave_at);
    tokio::pin!(leave);
    let mut parser = Parser::default();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = env.stop() => return life.end = End::Open,
            () = &mut leave => return life.end = End::Left,
        };
        let bytes = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(bytes) => bytes,
                Err(_) => continue,
            },
            Some(Err(e)) => return life.end = End::Dropped(e.to_string()),
            None => return life.end = End::Dropped("stream ended without a close event".into()),
        };
        for event in parser.push(&bytes) {
            if event.id.is_some() {
                state.last_event_id = event.id.clone();
            }
            match event.name.as_str() {
                "close" => {
                    let v: Value = serde_json::from_str(&event.data).unwrap_or_default();
                    let code = v["code"].as_u64().unwrap_or(0) as u16;
                    let reason = v["reason"].as_str().unwrap_or("").to_owned();
                    return life.end = End::Closed(code, reason);
                }
                "gap" => life.gaps += 1,
                // An id-only event says where the stream stands; nothing to record.
                _ if event.data.is_empty() && !event.had_data => {}
                _ => record(env, life, state, &event.data, event.id.as_deref()),
            }
        }
    }
}

#[derive(Default)]
struct Parser {
    buf: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

struct Event {
    name: String,
    data: String,
    had_data: bool,
    id: Option<String>,
}

impl Parser {
    /// The events that `bytes` completes.
    fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=at).collect();
            let line = String::from_utf8_lossy(&line[..at]).into_owned();
            if line.is_empty() {
                let data = self.data.take();
                events.push(Event {
                    name: self.name.take().unwrap_or_else(|| "message".into()),
                    had_data: data.is_some(),
                    data: data.unwrap_or_default(),
                    id: self.id.clone(),
                });
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.name = Some(value.to_owned()),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                "id" => self.id = Some(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

async fn sleep_until_opt(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
