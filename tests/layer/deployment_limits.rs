//! The limits a deployment sets per instance: sockets per token `sub` (`429`)
//! and handshakes per second (`503`); a flood from one user leaves the others
//! their sockets and their share of handshakes.

use std::time::Duration;

use crate::common::*;
use http::StatusCode;
use serde_json::json;

fn path_for(sub: &str, chan: &str) -> String {
    let claims = json!({"mode": "r", "channel": chan, "sub": sub, "exp": now() + 3600});
    format!("/{}", token(claims))
}

#[tokio::test]
async fn a_sub_over_its_socket_limit_gets_429_and_others_are_unaffected() {
    let server = TestServer::start(config().max_sockets_per_sub(2)).await;
    let chan = unique("per_sub");
    let alice = path_for("alice", &chan);
    let first = server.connect(&alice).await;
    let _second = server.connect(&alice).await;
    let (status, body) = server.handshake(&alice).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, "Too many connections for this user");
    // Another user, and a token without `sub`, are not counted with alice.
    let _bob = server.connect(&path_for("bob", &chan)).await;
    let anonymous = format!("/{}", token(claims("r", Some(&chan))));
    let _anon = server.connect(&anonymous).await;
    let _anon2 = server.connect(&anonymous).await;
    // A socket that ends gives its place back.
    drop(first);
    let again = async {
        loop {
            if server.try_connect(&alice).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, again)
        .await
        .expect("alice never got her place back");
}

#[tokio::test]
async fn handshakes_beyond_the_rate_get_503() {
    let server = TestServer::start(config().max_handshakes_per_second(3)).await;
    let chan = unique("rate");
    let path = format!("/{}", token(claims("r", Some(&chan))));
    let mut sockets = Vec::new();
    let mut refused = None;
    // A burst: a second's worth passes, then the rest is refused.
    for _ in 0..10 {
        match server.try_connect(&path).await {
            Ok(ws) => sockets.push(ws),
            Err(_) => {
                refused = Some(server.handshake(&path).await);
                break;
            }
        }
    }
    assert!(sockets.len() >= 3, "{} taken", sockets.len());
    let (status, body) = refused.expect("no handshake was refused");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "Too many handshakes: try again shortly");
    let metrics = server.layer.stats();
    assert!(format!("{metrics:?}").contains("too_many_handshakes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_user_starves_no_one_else() {
    // Room for the flooder's 3 sockets and 10 of others, 20 handshakes a second.
    let config = config()
        .max_sockets(13)
        .max_sockets_per_sub(3)
        .max_handshakes_per_second(20);
    let server = TestServer::start(config).await;
    let chan = unique("flood_sub");
    let mallory = path_for("mallory", &chan);
    let flood = (0..200).map(|_| server.try_connect(&mallory));
    let answers = futures_util::future::join_all(flood).await;
    let mut kept = Vec::new();
    for answer in answers {
        match answer {
            Ok(ws) => kept.push(ws),
            Err(e) => assert!(e.to_string().contains("429"), "{e}"),
        }
    }
    assert_eq!(kept.len(), 3, "mallory's sockets");
    // Right after the flood, five others get every socket they ask for.
    let mut sockets = Vec::new();
    for k in 0..10 {
        let path = path_for(&format!("user{}", k % 5), &chan);
        match server.try_connect(&path).await {
            Ok(ws) => sockets.push(ws),
            Err(e) => panic!("socket {k}: {e}; {:?}", server.handshake(&path).await),
        }
    }
    notify(&chan, "for everyone").await;
    for ws in kept.iter_mut().chain(&mut sockets) {
        assert_eq!(recv_text(ws).await, "for everyone");
    }
}
