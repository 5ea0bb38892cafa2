//! [`PgWsBody`]: the wrapped service's body, or the layer's own short answer.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The response body of [`PgWsService`](crate::PgWsService): the wrapped
    /// service's body streamed untouched, or the layer's own answer (a `101` or
    /// a refusal).
    #[project = BodyProj]
    pub enum PgWsBody<B> {
        /// The wrapped service's body.
        Inner { #[pin] body: B },
        /// A body the layer wrote.
        Full { data: Option<Bytes> },
    }
}

impl<B> PgWsBody<B> {
    pub(crate) fn full(data: Bytes) -> Self {
        PgWsBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl<B> Body for PgWsBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            BodyProj::Inner { body } => body.poll_frame(cx),
            BodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PgWsBody::Inner { body } => body.is_end_stream(),
            PgWsBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PgWsBody::Inner { body } => body.size_hint(),
            PgWsBody::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
