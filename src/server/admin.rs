//! The admin listener (`PGWS_ADMIN_ADDR`): `/metrics`, `/health` and `/ready`.

use std::{
    convert::Infallible,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::PgWsLayer;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, sync::watch};

use super::HTTP_DRAIN_TIMEOUT;

/// The process-wide Prometheus recorder, installed on first use. An error when
/// another `metrics` recorder was installed first.
pub(crate) fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| format!("cannot install the Prometheus recorder: {e}"))
        })
        .clone()
}

pub(crate) struct Admin {
    pub(crate) layer: PgWsLayer,
    pub(crate) metrics: Result<PrometheusHandle, String>,
    /// Set once shutdown starts: `/ready` fails for the drain period.
    pub(crate) draining: Arc<AtomicBool>,
}

/// Serves the admin routes over HTTP/1.1 until `stop` turns true.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    admin: Arc<Admin>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let admin = admin.clone();
                    let svc = hyper::service::service_fn(move |req| {
                        std::future::ready(Ok::<_, Infallible>(admin_route(&admin, &req)))
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    let watched = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = watched.await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(HTTP_DRAIN_TIMEOUT, graceful.shutdown()).await;
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // A closed sender means the server is gone: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// `/health`: the process is up. `/ready`: the listener is connected and listening
/// (and, with history channels, the history store is ready), and the server is
/// not draining for shutdown.
/// `/metrics`: Prometheus text.
fn admin_route<B>(admin: &Admin, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return admin_text(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n".into(),
        );
    }
    match req.uri().path() {
        "/health" => admin_text(StatusCode::OK, "ok\n".into()),
        "/ready" if admin.draining.load(Ordering::Relaxed) => admin_text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down, draining\n".into(),
        ),
        "/ready" if admin.layer.is_listening() => admin_text(StatusCode::OK, "ready\n".into()),
        "/ready" => admin_text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the listener is not connected to the database\n".into(),
        ),
        "/metrics" => match &admin.metrics {
            Ok(handle) => {
                handle.run_upkeep();
                let mut res = admin_text(StatusCode::OK, handle.render());
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            Err(e) => admin_text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        },
        _ => admin_text(StatusCode::NOT_FOUND, "Not Found\n".into()),
    }
}

fn admin_text(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(text)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
