//! The reverse proxy to `PGWS_UPSTREAM`.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::{Body, BoxError, Upstream, routes::plain};

/// How long the proxy waits for a TCP connection to the upstream.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type UpstreamClient = Client<HttpConnector, Incoming>;

pub(crate) fn upstream_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(UPSTREAM_CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), besides those named in `Connection`.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

pub(crate) async fn proxy(
    client: &UpstreamClient,
    upstream: &Upstream,
    req: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
) -> Response<Body> {
    let req = match upstream_request(req, upstream, peer, scheme) {
        Ok(req) => req,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the upstream request");
            return plain(StatusCode::BAD_GATEWAY, "Bad Gateway");
        }
    };
    match client.request(req).await {
        Ok(res) => downstream_response(res),
        Err(e) => {
            tracing::warn!(error = %e, "upstream unreachable");
            plain(StatusCode::BAD_GATEWAY, "Bad Gateway")
        }
    }
}

/// The request as the upstream should see it; the body is moved, not read.
fn upstream_request(
    mut req: Request<Incoming>,
    upstream: &Upstream,
    peer: SocketAddr,
    scheme: &'static str,
) -> Result<Request<Incoming>, http::Error> {
    // HTTP/2 clients send `:authority` instead of `Host`.
    let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
        let authority = req.uri().authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    *req.uri_mut() = upstream.uri_for(req.uri())?;
    // The client speaks HTTP/1.1 to the upstream whatever the client spoke to us.
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    remove_hop_by_hop(headers);
    headers.insert(header::HOST, upstream.host.clone());
    match original_host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    append_forwarded_for(headers, peer.ip().to_canonical());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    Ok(req)
}

fn downstream_response(mut res: Response<Incoming>) -> Response<Body> {
    remove_hop_by_hop(res.headers_mut());
    res.map(|b| b.map_err(BoxError::from).boxed_unsync())
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// `X-Forwarded-For: <what came in>, <peer>`.
fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let mut chain: Vec<String> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    chain.push(peer.to_string());
    if let Ok(value) = HeaderValue::from_str(&chain.join(", ")) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}
