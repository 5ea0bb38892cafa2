//! The README's nginx snippet, as `examples/deploy/nginx.conf` holds it, with
//! WebSockets and event streams through it.

use futures_util::SinkExt;
use http_body_util::BodyExt;
use tokio_websockets::{ClientBuilder, Message};

use crate::{
    common::{program::Program, *},
    proxies::{Backend, Proxy, example, find},
};

#[test]
fn the_readme_nginx_snippet_is_the_checked_in_configuration() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```nginx\n")
        .expect("no nginx snippet in README.md")
        + 9;
    let snippet: Vec<&str> = readme[start..]
        .lines()
        .take_while(|l| !l.starts_with("```"))
        .map(str::trim)
        .collect();
    let conf = example("nginx.conf");
    let conf: Vec<&str> = conf.lines().map(str::trim).collect();
    assert!(
        conf.windows(snippet.len()).any(|w| w == snippet.as_slice()),
        "README.md's nginx snippet is not in examples/deploy/nginx.conf:\n{}",
        snippet.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_and_event_streams_pass_through_nginx() {
    let Some(nginx) = find("nginx", "PGWS_NGINX") else {
        return;
    };
    let backends: Vec<Backend> = (0..3).map(|_| Backend::free()).collect();
    let mut programs = Vec::new();
    for b in &backends {
        programs.push(start(*b).await);
    }
    let proxy = Proxy::nginx(&nginx, &backends);
    let chan = unique("ngx");
    let path = format!("/ws/{chan}/{}", token(claims("rw", None)));

    let uri: http::Uri = format!("ws://{}{path}", proxy.addr).parse().unwrap();
    let (mut ws, _) = tokio::time::timeout(WAIT, ClientBuilder::from_uri(uri).connect())
        .await
        .expect("handshake timed out")
        .unwrap_or_else(|e| panic!("handshake through nginx: {e}\n{}", proxy.log()));
    let mut stream = event_stream(&proxy, &path).await;

    // From the database to both; then from the socket, through nginx, to both.
    notify(&chan, "from sql").await;
    assert_eq!(recv_text(&mut ws).await, "from sql");
    assert_eq!(next_data(&mut stream).await, "from sql");
    ws.send(Message::text("from the socket")).await.unwrap();
    // A socket's message comes in its envelope.
    let payload = |text: String| {
        let envelope: serde_json::Value = serde_json::from_str(&text).unwrap();
        envelope["payload"].as_str().unwrap().to_owned()
    };
    assert_eq!(payload(recv_text(&mut ws).await), "from the socket");
    assert_eq!(payload(next_data(&mut stream).await), "from the socket");
    let _ = ws.close().await;
    drop(programs);
}

/// An event stream through nginx, over HTTP/1.1.
async fn event_stream(proxy: &Proxy, path: &str) -> hyper::body::Incoming {
    let req = http::Request::get(path)
        .header(http::header::HOST, proxy.addr.to_string())
        .header(http::header::ACCEPT, "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tcp);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let res = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("stream request timed out")
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::OK, "{}", proxy.log());
    let kind = &res.headers()[http::header::CONTENT_TYPE];
    assert!(
        kind.as_bytes().starts_with(b"text/event-stream"),
        "{kind:?}"
    );
    res.into_body()
}

/// The data of the next event with data: nginx buffering any of it would make
/// this wait for ever (bounded by [`WAIT`]).
async fn next_data(body: &mut hyper::body::Incoming) -> String {
    let mut buf = String::new();
    let read = async {
        loop {
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return data.to_owned();
                }
            }
            let frame = body.frame().await.expect("the stream ended").unwrap();
            if let Ok(data) = frame.into_data() {
                buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("no event in time")
}

/// One instance on its fixed port, under `/ws` as the configuration routes it.
async fn start(b: Backend) -> Program {
    tokio::task::spawn_blocking(move || {
        let uri = db_uri();
        let port = b.public.port().to_string();
        let vars = [
            ("PGWS_DB_URI", uri.as_str()),
            ("PGWS_JWT_SECRET", SECRET),
            ("PGWS_PORT", port.as_str()),
            ("PGWS_PATH_PREFIX", "/ws"),
            ("PGWS_DRAIN_PERIOD", "0"),
            ("RUST_LOG", "warn"),
        ];
        Program::start(&vars, |line| line.starts_with("  Admin:"))
    })
    .await
    .unwrap()
}
