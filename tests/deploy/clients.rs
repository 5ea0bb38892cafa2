//! Clients that go through a proxy and keep what happened to them: every
//! message, every ending and every failed handshake.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::watch};
use tokio_websockets::ClientBuilder;

use crate::common::WAIT;

/// What one client saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// The payloads, in the order received (a plain client: per socket).
    pub sockets: Vec<Vec<String>>,
    /// How each socket or stream ended: a close code, or what happened instead.
    pub endings: Vec<String>,
    /// Handshakes that failed, with the answer.
    pub failures: Vec<String>,
}

impl Seen {
    pub fn payloads(&self) -> Vec<String> {
        self.sockets.concat()
    }
}

/// When a client is done: a resuming one once it has `count` messages, a plain
/// one once the flag turns true.
pub type Until = watch::Receiver<Option<usize>>;

/// A WebSocket client through `front` at `path` (no query), resuming on history
/// channel `chan` with `since=` from `epoch`/`offset`, reconnecting whenever its
/// socket ends, until it has the number of messages `until` names.
pub async fn resuming_ws(front: SocketAddr, path: String, epoch: String, until: Until) -> Seen {
    let mut seen = Seen::default();
    let mut offset = 0i64;
    let mut until = until;
    let done = |seen: &Seen, until: &Option<usize>| {
        until.is_some_and(|n| seen.sockets.iter().map(Vec::len).sum::<usize>() >= n)
    };
    loop {
        if done(&seen, &until.borrow()) {
            return seen;
        }
        let url = format!("ws://{front}{path}?since={epoch}:{offset}");
        let mut ws = match connect(&url).await {
            Ok(ws) => ws,
            Err(e) => {
                seen.failures.push(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        seen.sockets.push(Vec::new());
        loop {
            let msg = tokio::select! {
                msg = ws.next() => msg,
                _ = until.changed() => {
                    if done(&seen, &until.borrow()) {
                        return seen;
                    }
                    continue;
                }
            };
            let text = match msg {
                Some(Ok(msg)) if msg.is_close() => {
                    let code = msg.as_close().map_or(0, |(c, _)| u16::from(c));
                    seen.endings.push(code.to_string());
                    break;
                }
                Some(Ok(msg)) => match msg.as_text() {
                    Some(text) => text.to_owned(),
                    None => continue,
                },
                Some(Err(e)) => {
                    seen.endings.push(format!("error: {e}"));
                    break;
                }
                None => {
                    seen.endings.push("ended without a close frame".into());
                    break;
                }
            };
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            offset = frame["offset"].as_i64().unwrap();
            let payload = frame["payload"].as_str().unwrap().to_owned();
            seen.sockets.last_mut().unwrap().push(payload);
            if done(&seen, &until.borrow()) {
                return seen;
            }
        }
    }
}

/// A WebSocket client through `front` on a plain channel, reconnecting whenever
/// its socket ends, until `stop` turns true.
pub async fn plain_ws(front: SocketAddr, path: String, mut stop: watch::Receiver<bool>) -> Seen {
    let mut seen = Seen::default();
    while !*stop.borrow() {
        let mut ws = match connect(&format!("ws://{front}{path}")).await {
            Ok(ws) => ws,
            Err(e) => {
                seen.failures.push(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        seen.sockets.push(Vec::new());
        loop {
            let msg = tokio::select! {
                msg = ws.next() => msg,
                _ = stop.changed() => return seen,
            };
            match msg {
                Some(Ok(msg)) if msg.is_close() => {
                    let code = msg.as_close().map_or(0, |(c, _)| u16::from(c));
                    seen.endings.push(code.to_string());
                    break;
                }
                Some(Ok(msg)) => {
                    if let Some(text) = msg.as_text() {
                        seen.sockets.last_mut().unwrap().push(text.to_owned());
                    }
                }
                Some(Err(e)) => {
                    seen.endings.push(format!("error: {e}"));
                    break;
                }
                None => {
                    seen.endings.push("ended without a close frame".into());
                    break;
                }
            }
        }
    }
    seen
}

async fn connect(url: &str) -> Result<crate::common::Ws, String> {
    let uri: http::Uri = url.parse().unwrap();
    match tokio::time::timeout(WAIT, ClientBuilder::from_uri(uri).connect()).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("handshake failed: {e}")),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// An event stream client through `front` at `path` on history channel `chan`,
/// over HTTP/2 with prior knowledge when `h2`: starts after `epoch:0` and
/// reconnects with `Last-Event-ID` whenever the stream ends, as `EventSource`
/// does, until it has the number of messages `until` names.
pub async fn resuming_sse(
    front: SocketAddr,
    path: String,
    epoch: String,
    h2: bool,
    mut until: Until,
) -> Seen {
    let mut seen = Seen::default();
    let mut last_id = format!("{epoch}:0");
    let count = |seen: &Seen| seen.sockets.iter().map(Vec::len).sum::<usize>();
    loop {
        if until.borrow().is_some_and(|n| count(&seen) >= n) {
            return seen;
        }
        let mut body = match open_stream(front, &path, &last_id, h2).await {
            Ok(body) => body,
            Err(e) => {
                seen.failures.push(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        seen.sockets.push(Vec::new());
        let mut buf = String::new();
        let ending = 'stream: loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                _ = until.changed() => {
                    if until.borrow().is_some_and(|n| count(&seen) >= n) {
                        return seen;
                    }
                    continue;
                }
            };
            let data = match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Some(Err(e)) => break format!("error: {e}"),
                None => break "ended without a close event".into(),
            };
            buf.push_str(std::str::from_utf8(&data).unwrap());
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let field = |name: &str| {
                    event
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_owned)
                };
                if let Some(close) = field("event: ").filter(|k| k == "close") {
                    let _ = close;
                    let data: serde_json::Value =
                        serde_json::from_str(&field("data: ").unwrap()).unwrap();
                    break 'stream data["code"].to_string();
                }
                if let (Some(id), Some(data)) = (field("id: "), field("data: ")) {
                    last_id = id;
                    seen.sockets.last_mut().unwrap().push(data);
                }
            }
            if until.borrow().is_some_and(|n| count(&seen) >= n) {
                return seen;
            }
        };
        seen.endings.push(ending);
    }
}

type Stream = hyper::body::Incoming;

/// `GET path` with `Accept: text/event-stream` on a fresh connection; the body
/// of a `200`, or what came instead.
async fn open_stream(
    front: SocketAddr,
    path: &str,
    last_id: &str,
    h2: bool,
) -> Result<Stream, String> {
    let req = Request::get(format!("http://{front}{path}"))
        .header(header::HOST, front.to_string())
        .header(header::ACCEPT, "text/event-stream")
        .header("last-event-id", last_id)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let send = async {
        let tcp = TcpStream::connect(front).await.map_err(|e| e.to_string())?;
        let io = TokioIo::new(tcp);
        let res = if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(req).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(req).await
        };
        res.map_err(|e| e.to_string())
    };
    let res = tokio::time::timeout(WAIT, send)
        .await
        .map_err(|_| "stream request timed out".to_owned())??;
    if res.status() == StatusCode::OK {
        return Ok(res.into_body());
    }
    let status = res.status();
    let body = tokio::time::timeout(WAIT, res.into_body().collect()).await;
    let text = body
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Err(format!("{status}: {text}"))
}
