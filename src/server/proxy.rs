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
/// `Upgrade` among them: the proxy never upgrades.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
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
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

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
    remove_client_forwarding(headers);
    headers.insert(header::HOST, upstream.host.clone());
    set_forwarding(headers, peer.ip().to_canonical(), scheme, original_host);
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

/// What the client said about earlier hops: `Forwarded`, `X-Forwarded-*` and
/// `X-Real-IP`. Nothing vouches for it, so the upstream never sees it.
fn remove_client_forwarding(headers: &mut HeaderMap) {
    let claimed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name == header::FORWARDED || name == X_REAL_IP || name.starts_with("x-forwarded-")
        })
        .cloned()
        .collect();
    for name in claimed {
        headers.remove(name);
    }
}

/// The hop from the client, from what pgws knows: `Forwarded` (RFC 7239) and
/// `X-Forwarded-For`, `-Proto` and `-Host`.
fn set_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    scheme: &'static str,
    host: Option<HeaderValue>,
) {
    // An IPv6 address is quoted, in brackets (RFC 7239 §6).
    let mut forwarded = match peer {
        IpAddr::V4(ip) => format!("for={ip};proto={scheme}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={scheme}"),
    };
    if let Some(host) = host.as_ref().and_then(|h| h.to_str().ok()) {
        forwarded.push_str(&format!(";host={}", quoted(host)));
    }
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(header::FORWARDED, value);
    }
    if let Ok(value) = HeaderValue::from_str(&peer.to_string()) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// `text` as an RFC 9110 quoted-string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}
