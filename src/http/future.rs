//! [`ResponseFuture`]: the wrapped service's future, or the layer's handshake.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use super::{body::PgWsBody, sse};

pub(crate) type Handshake = Pin<Box<dyn Future<Output = Response<Bytes>> + Send>>;
/// Opening an event stream: the stream, or a refusal.
pub(crate) type Opening = Pin<Box<dyn Future<Output = sse::Opened> + Send>>;

pin_project! {
    /// The response future of [`PgWsService`](crate::PgWsService).
    #[project = FutureProj]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F },
        Own { future: Handshake },
        Events { future: Opening },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn own(future: Handshake) -> Self {
        Self {
            kind: Kind::Own { future },
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn events(future: Opening) -> Self {
        Self {
            kind: Kind::Events { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<PgWsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(res.map(PgWsBody::inner)))
            }
            KindProj::Own { future } => {
                let res = ready!(future.as_mut().poll(cx));
                Poll::Ready(Ok(res.map(PgWsBody::full)))
            }
            KindProj::Events { future } => match ready!(future.as_mut().poll(cx)) {
                Ok(res) => Poll::Ready(Ok(res.map(PgWsBody::events))),
                Err(refused) => Poll::Ready(Ok(refused.map(PgWsBody::full))),
            },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
