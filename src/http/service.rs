//! [`PgWsService`]: takes our handshakes, passes the rest to the wrapped service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use hyper::upgrade::OnUpgrade;
use tower::Service;
use tracing::Instrument;

use futures_util::future::join_all;
use tokio::time::timeout;

use crate::{
    auth::{Grant, Scope},
    engine::{Engine, outbox::Outbox, resume::Resume, session::Session, socket::Socket},
    refusal::Refusal,
};

use super::{
    body::PgWsBody,
    future::ResponseFuture,
    handshake::{self, Route},
    positions, sse,
};

/// The service made by [`PgWsLayer`](crate::PgWsLayer) around `S`.
#[derive(Clone)]
pub struct PgWsService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S> PgWsService<S> {
    pub(crate) fn new(inner: S, engine: Arc<Engine>) -> Self {
        Self { inner, engine }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PgWsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<PgWsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // --- Server-sent events (PROTOCOL.md §16): a branch of its own. ---
        if let Some(future) = self.event_stream(&req) {
            return future;
        }
        // --- WebSocket handshakes. ---
        let (channel, token, pgws_protocol, session) =
            match handshake::route(&req, &self.engine.settings.path_prefix) {
                Route::Pass => return ResponseFuture::inner(self.inner.call(req)),
                Route::Refused(refusal) => {
                    let res = refuse(&self.engine, refusal);
                    return ResponseFuture::own(Box::pin(std::future::ready(res)));
                }
                Route::Ours {
                    channel,
                    token,
                    pgws_protocol,
                    session,
                } => (
                    channel.map(str::to_owned),
                    token.to_owned(),
                    pgws_protocol,
                    session,
                ),
            };
        if !self
            .engine
            .origin_allowed(req.headers().get(header::ORIGIN))
        {
            let res = refuse(&self.engine, Refusal::OriginNotAllowed);
            return ResponseFuture::own(Box::pin(std::future::ready(res)));
        }
        // Positions are read only with history on: otherwise the query is not ours.
        let query = self
            .engine
            .history
            .as_ref()
            .and(req.uri().query())
            .map(str::to_owned);
        let accept_req = Accept {
            channel,
            query,
            token,
            key: handshake::key(&req),
            upgrade: hyper::upgrade::on(&mut req),
            pgws_protocol,
            session,
        };
        ResponseFuture::own(Box::pin(accept(self.engine.clone(), accept_req)))
    }
}

impl<S> PgWsService<S> {
    /// An event stream request's answer; `None` when the request is no event
    /// stream on a pgws URL.
    fn event_stream<B, F>(&self, req: &Request<B>) -> Option<ResponseFuture<F>> {
        let engine = &self.engine;
        let (channel, token) = match sse::route(req, &engine.settings.path_prefix) {
            Route::Pass => return None,
            Route::Refused(refusal) => {
                let res = Err(refuse(engine, refusal));
                return Some(ResponseFuture::events(Box::pin(std::future::ready(res))));
            }
            Route::Ours { channel, token, .. } => (channel.map(str::to_owned), token.to_owned()),
        };
        if !engine.origin_allowed(req.headers().get(header::ORIGIN)) {
            let res = Err(refuse(engine, Refusal::OriginNotAllowed));
            return Some(ResponseFuture::events(Box::pin(std::future::ready(res))));
        }
        // Positions are read only with history on: otherwise they are not ours.
        let with_history =
            |value: Option<&str>| engine.history.as_ref().and(value).map(str::to_owned);
        // Bytes that are no text stay wrong (and so a 400), never dropped.
        let last_event_id = req
            .headers()
            .get("last-event-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        let opening = sse::Opening {
            channel,
            token,
            query: with_history(req.uri().query()),
            last_event_id: with_history(last_event_id.as_deref()),
        };
        Some(ResponseFuture::events(Box::pin(sse::open(
            engine.clone(),
            opening,
        ))))
    }
}

/// What a handshake needs once it has been taken.
struct Accept {
    channel: Option<String>,
    /// The query string, with history on.
    query: Option<String>,
    token: String,
    /// `None` for an HTTP/2 extended CONNECT (RFC 8441), which has no key.
    key: Option<HeaderValue>,
    upgrade: OnUpgrade,
    pgws_protocol: bool,
    /// The client offered `pgws.json` (PROTOCOL.md §17).
    session: bool,
}

/// Token check, subscribe before accept, then `101` (`200` over HTTP/2) and the
/// socket task.
async fn accept(engine: Arc<Engine>, req: Accept) -> Response<Bytes> {
    let Accept {
        channel,
        query,
        token,
        key,
        upgrade,
        pgws_protocol,
        session: wants_session,
    } = req;
    let admitted = if wants_session {
        engine
            .admit_session(channel.as_deref(), &token)
            .map(|(permit, (grant, scope))| (permit, grant, Some(scope)))
    } else {
        engine
            .admit(channel.as_deref(), &token)
            .map(|(permit, grant)| (permit, grant, None))
    };
    let (permit, grant, scope) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(&engine, refusal),
    };
    let mut resume = match resume(&engine, query.as_deref(), &grant, wants_session).await {
        Ok(resume) => resume,
        Err(refusal) => return refuse(&engine, refusal),
    };
    let (subscription, session) = match scope {
        Some(scope) => {
            // With history on, a session socket may replay a channel it
            // subscribes to later: it has positions from the start.
            if engine.history.is_some() && grant.mode.reads() {
                resume.get_or_insert_with(|| Resume::session(Vec::new()));
            }
            match open_session(&engine, &grant, scope, channel).await {
                Ok(session) => (None, Some(Box::new(session))),
                Err(refusal) => return refuse(&engine, refusal),
            }
        }
        None if grant.mode.reads() => match engine.subscribe(&grant).await {
            Ok(sub) => (Some(sub), None),
            Err(refusal) => return refuse(&engine, refusal),
        },
        None => (None, None),
    };
    let socket = Socket {
        grant,
        subscription,
        session,
        resume: resume.map(Box::new),
        shutdown: engine.shutdown.subscribe(),
        engine,
        _permit: permit,
    };
    // One span per socket: an id, its channels and mode, never the token. The
    // channels go as a string, which subscribers write escaped: clients name them.
    let span = tracing::info_span!(
        "socket",
        id = socket.engine.next_socket_id(),
        channels = socket.grant.channels.join(",").as_str(),
        mode = socket.grant.mode.as_str(),
    );
    tokio::spawn(socket.serve(upgrade).instrument(span));
    let protocol = handshake::answered_protocol(pgws_protocol, wants_session);
    handshake::accepted(key.as_ref(), protocol)
}

/// A session socket's state, its channels listened to (each a member of the
/// hub of its own) within the subscribe timeout.
async fn open_session(
    engine: &Engine,
    grant: &Grant,
    scope: Scope,
    path_channel: Option<String>,
) -> Result<Session, Refusal> {
    let settings = &engine.settings;
    let queue = Outbox::session(settings.queue_length, settings.queue_bytes);
    let mut channels = Vec::new();
    if grant.mode.reads() {
        let joins = grant
            .channels
            .iter()
            .map(|c| engine.listener.join(vec![c.clone()], queue.clone()));
        let joined = timeout(settings.subscribe_timeout, join_all(joins)).await;
        let joined = joined.map_err(|_| Refusal::DatabaseUnavailable)?;
        for (channel, subscription) in grant.channels.iter().zip(joined) {
            let subscription = subscription.ok_or(Refusal::DatabaseUnavailable)?;
            channels.push((channel.clone(), subscription));
        }
    }
    Ok(Session {
        queue,
        path_channel,
        scope,
        channels,
    })
}

/// The replay and positions a reading socket asked for with `since=` or
/// `history=`, with history on; `None` when it asked for neither.
/// A `history=n` start is read here, before subscribing, as a window after the
/// head: what is committed after the subscription is then replayed or queued.
async fn resume(
    engine: &Engine,
    query: Option<&str>,
    grant: &Grant,
    session: bool,
) -> Result<Option<Resume>, Refusal> {
    let (Some(history), true) = (&engine.history, grant.mode.reads()) else {
        return Ok(None);
    };
    let Some(asked) = positions::parse(query)? else {
        return Ok(None);
    };
    let starts = asked.starts(&grant.channels, &history.channels)?;
    let starts = positions::windows(history, starts).await?;
    Ok(Some(if session {
        Resume::session(starts)
    } else {
        Resume::new(starts)
    }))
}

/// A refusal, counted by reason.
fn refuse(engine: &Engine, refusal: Refusal) -> Response<Bytes> {
    engine.counters.refused(&refusal);
    tracing::debug!(reason = refusal.label(), "handshake refused");
    refusal.response()
}

impl<S: fmt::Debug> fmt::Debug for PgWsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgWsService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
