//! Who may connect: token sources outside the URL, the Origin allow-list, the
//! socket limit.

use crate::common::*;
use http::{HeaderName, HeaderValue};
use tokio_websockets::ClientBuilder;

async fn connect_with(
    server: &TestServer,
    path: &str,
    headers: &[(&'static str, String)],
) -> Result<(Ws, http::Response<()>), tokio_websockets::Error> {
    let mut builder = ClientBuilder::from_uri(server.url(path).parse().unwrap());
    for (name, value) in headers {
        builder = builder
            .add_header(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            )
            .unwrap();
    }
    builder.connect().await
}

#[tokio::test]
async fn a_bearer_header_carries_the_token_and_the_path_names_the_channel() {
    let server = TestServer::start(config()).await;
    let chan = unique("bearer");
    let auth = format!("Bearer {}", token(claims("r", None)));
    let (mut ws, _) = connect_with(&server, &format!("/{chan}"), &[("authorization", auth)])
        .await
        .unwrap();
    notify(&chan, "via header").await;
    assert_eq!(recv_text(&mut ws).await, "via header");
}

#[tokio::test]
async fn a_subprotocol_carries_the_token_and_pgws_is_answered() {
    let server = TestServer::start(config().path_prefix("/ws")).await;
    let chan = unique("subproto");
    let offer = format!("pgws, pgws.bearer.{}", token(claims("r", Some(&chan))));
    let (mut ws, res) = connect_with(&server, "/ws", &[("sec-websocket-protocol", offer)])
        .await
        .unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "pgws");
    notify(&chan, "via subprotocol").await;
    assert_eq!(recv_text(&mut ws).await, "via subprotocol");
}

#[tokio::test]
async fn a_header_token_still_goes_through_every_check() {
    let server = TestServer::start(config()).await;
    let expired = token(serde_json::json!({"mode": "r", "exp": now() - 10}));
    let auth = format!("Bearer {expired}");
    let req = handshake_request("/chat", &[("authorization", &auth)]);
    let (status, body) = server.request(req).await;
    assert_eq!(status, 401);
    assert!(body.starts_with("Token expired"), "{body}");
}

#[tokio::test]
async fn tokens_in_two_places_must_agree() {
    let server = TestServer::start(config()).await;
    let chan = unique("agree");
    let a = token(claims("r", Some(&chan)));
    let b = token(claims("rw", Some(&chan)));
    let req = handshake_request(
        &format!("/{a}"),
        &[("authorization", &format!("Bearer {b}"))],
    );
    let (status, body) = server.request(req).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("Conflicting tokens"), "{body}");
    let same = handshake_request(
        &format!("/{a}"),
        &[("authorization", &format!("Bearer {a}"))],
    );
    assert_eq!(server.request(same).await.0, 101);
}

#[tokio::test]
async fn a_bearer_subprotocol_without_pgws_is_refused() {
    let server = TestServer::start(config()).await;
    let offer = format!("pgws.bearer.{}", token(claims("r", Some(&unique("lone")))));
    let req = handshake_request("/", &[("sec-websocket-protocol", &offer)]);
    let (status, body) = server.request(req).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("Invalid subprotocol"), "{body}");
}

#[tokio::test]
async fn without_a_token_anywhere_the_request_is_not_ours() {
    let server = TestServer::start(config()).await;
    let (status, body) = server.request(handshake_request("/chat", &[])).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "inner /chat"));
}

#[tokio::test]
async fn origins_outside_the_allow_list_are_refused() {
    let server = TestServer::start(config().allowed_origins(["https://App.example.com/"])).await;
    let chan = unique("origin");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let bad = handshake_request(&path, &[("origin", "https://evil.example.com")]);
    let (status, body) = server.request(bad).await;
    assert_eq!(status, 403);
    assert!(body.starts_with("Origin not allowed"), "{body}");
    let good = handshake_request(&path, &[("origin", "https://app.example.com")]);
    assert_eq!(server.request(good).await.0, 101);
    // Clients that are not browsers send no Origin.
    assert_eq!(server.request(handshake_request(&path, &[])).await.0, 101);
}

#[tokio::test]
async fn beyond_the_socket_limit_handshakes_get_503_until_one_closes() {
    let server = TestServer::start(config().max_sockets(2)).await;
    let chan = unique("limit");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let a = server.connect(&path).await;
    let _b = server.connect(&path).await;
    let (status, body) = server.handshake(&path).await;
    assert_eq!(status, 503);
    assert!(body.starts_with("Too many connections"), "{body}");
    drop(a);
    for _ in 0..100 {
        if server.try_connect(&path).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the slot was never freed");
}
