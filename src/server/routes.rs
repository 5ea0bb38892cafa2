//! What the layer does not take: static files, then the upstream, else `404`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use tower::ServiceExt;
use tower_http::services::ServeDir;

use super::{
    Body, BoxError, Upstream,
    proxy::{UpstreamClient, proxy},
};

/// The fallback for requests the layer does not take.
pub(crate) struct Routes {
    pub(crate) static_files: Option<StaticFiles>,
    pub(crate) upstream: Option<Upstream>,
    pub(crate) client: UpstreamClient,
    /// `X-Forwarded-Proto` for the upstream: `https` under TLS.
    pub(crate) scheme: &'static str,
}

/// Static files first, then the upstream; `404` when neither answers. `CONNECT`
/// (an HTTP/1.1 tunnel, or an HTTP/2 extended CONNECT the layer did not take) is
/// `501`: the proxy forwards plain requests, never a tunnel. A path with a dot
/// segment is `400`: it could leave the upstream's base path.
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
    if has_dot_segment(req.uri().path()) {
        return plain(
            StatusCode::BAD_REQUEST,
            "Bad Request: a path segment is . or ..",
        );
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

/// Whether `path` has a `.` or `..` segment once percent-decoded, `%2F` and `\`
/// counting as `/`: an upstream that decodes them (as nginx does) would climb
/// out of its base path with it.
fn has_dot_segment(path: &str) -> bool {
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    let decoded: Vec<u8> = percent_decode_str(path).collect();
    decoded
        .split(|b| *b == b'/' || *b == b'\\')
        .any(|segment| segment == b"." || segment == b"..")
}

/// `PGWS_ROOT_PATH`: files under the root that are not hidden. A name that
/// starts with a dot (`.env`, `.git`), save `.well-known` (RFC 8615), and a
/// symbolic link that leads out of the root are not served: such a request goes
/// on as if the file were not there.
pub(crate) struct StaticFiles {
    dir: ServeDir,
    /// The root with every symbolic link resolved.
    root: PathBuf,
}

impl StaticFiles {
    pub(crate) fn new(root: PathBuf) -> StaticFiles {
        StaticFiles {
            dir: ServeDir::new(&root),
            root: std::fs::canonicalize(&root).unwrap_or(root),
        }
    }

    /// Whether the file for `path` may be served; `true` when there is none,
    /// for [`ServeDir`] to answer as it does.
    async fn may_serve(&self, path: &str) -> bool {
        let Ok(decoded) = percent_decode_str(path).decode_utf8() else {
            return true;
        };
        let mut file = self.root.clone();
        for part in Path::new(decoded.trim_start_matches('/')).components() {
            match part {
                Component::Normal(_) if is_hidden(part) => return false,
                Component::Normal(name) => file.push(name),
                // ServeDir refuses them.
                _ => return true,
            }
        }
        let Ok(real) = tokio::fs::canonicalize(&file).await else {
            return true;
        };
        if !self.holds(&real) {
            return false;
        }
        if !tokio::fs::metadata(&real).await.is_ok_and(|m| m.is_dir()) {
            return true;
        }
        match tokio::fs::canonicalize(real.join("index.html")).await {
            Ok(index) => self.holds(&index),
            Err(_) => true,
        }
    }

    /// Whether the resolved path `real` is under the root and not hidden.
    fn holds(&self, real: &Path) -> bool {
        real.strip_prefix(&self.root)
            .is_ok_and(|inside| !inside.components().any(is_hidden))
    }
}

/// A name that starts with a dot, save `.well-known`.
fn is_hidden(part: Component<'_>) -> bool {
    let name = part.as_os_str().as_encoded_bytes();
    name.starts_with(b".") && name != b".well-known"
}

/// The static file for a GET or HEAD, or the request back when there is none.
async fn serve_static(
    routes: &Routes,
    req: Request<Incoming>,
) -> Result<Response<Body>, Request<Incoming>> {
    let Some(files) = &routes.static_files else {
        return Err(req);
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(req);
    }
    if !files.may_serve(req.uri().path()).await {
        return Err(req);
    }
    // ServeDir consumes its request; give it a bodiless copy to keep ours for the proxy.
    let mut probe = Request::new(Empty::<Bytes>::new());
    *probe.method_mut() = req.method().clone();
    *probe.uri_mut() = req.uri().clone();
    *probe.version_mut() = req.version();
    *probe.headers_mut() = req.headers().clone();
    let Ok(res) = files.dir.clone().oneshot(probe).await;
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
