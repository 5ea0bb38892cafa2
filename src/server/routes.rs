//! What the layer does not take: static files, then the upstream, else `404`.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tower::ServiceExt;
use tower_http::services::ServeDir;

use super::{
    Body, BoxError, Upstream,
    proxy::{UpstreamClient, proxy},
};

/// The fallback for requests the layer does not take.
pub(crate) struct Routes {
    pub(crate) static_files: Option<ServeDir>,
    pub(crate) upstream: Option<Upstream>,
    pub(crate) client: UpstreamClient,
    /// `X-Forwarded-Proto` for the upstream: `https` under TLS.
    pub(crate) scheme: &'static str,
}

/// Static files first, then the upstream; `404` when neither answers. `CONNECT`
/// (an HTTP/1.1 tunnel, or an HTTP/2 extended CONNECT the layer did not take) is
/// `501`: the proxy forwards plain requests, never a tunnel.
pub(crate) async fn fallback(
    routes: Arc<Routes>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let head = req.method() == Method::HEAD;
    let res = route(&routes, req, peer).await;
    Ok(if head { without_body(res) } else { res })
}

async fn route(routes: &Routes, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return plain(StatusCode::NOT_IMPLEMENTED, "Not Implemented");
    }
    let req = match serve_static(routes, req).await {
        Ok(res) => return res,
        Err(req) => req,
    };
    let Some(upstream) = &routes.upstream else {
        return plain(StatusCode::NOT_FOUND, "Not Found");
    };
    proxy(&routes.client, upstream, req, peer, routes.scheme).await
}

/// The answer to a `HEAD`: its headers, no body. HTTP/1.1 drops the body by
/// itself; HTTP/2 would send it, and clients reset a stream that has one.
fn without_body(res: Response<Body>) -> Response<Body> {
    res.map(|_| {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync()
    })
}

/// The static file for a GET or HEAD, or the request back when there is none.
async fn serve_static(
    routes: &Routes,
    req: Request<Incoming>,
) -> Result<Response<Body>, Request<Incoming>> {
    let Some(dir) = &routes.static_files else {
        return Err(req);
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(req);
    }
    // ServeDir consumes its request; give it a bodiless copy to keep ours for the proxy.
    let mut probe = Request::new(Empty::<Bytes>::new());
    *probe.method_mut() = req.method().clone();
    *probe.uri_mut() = req.uri().clone();
    *probe.version_mut() = req.version();
    *probe.headers_mut() = req.headers().clone();
    let Ok(res) = dir.clone().oneshot(probe).await;
    if res.status() == StatusCode::NOT_FOUND {
        return Err(req);
    }
    Ok(res.map(|b| b.map_err(BoxError::from).boxed_unsync()))
}

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
