//! A connection whose writes may stay blocked only so long: a client that stops
//! reading (an event stream's, a WebSocket's, a large answer's) is dropped once
//! the socket has taken nothing for [`Deadlines::write`](super::connection::Deadlines),
//! so that it gives back its file descriptor, its buffers and its place under
//! `PGWS_MAX_SOCKETS`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

pin_project! {
    /// `inner`, whose writes fail with `TimedOut` once one has been pending for
    /// `limit`. The timer exists only while a write is blocked.
    pub(crate) struct WriteDeadline<S> {
        #[pin]
        inner: S,
        limit: Duration,
        blocked: Option<Pin<Box<Sleep>>>,
    }
}

impl<S> WriteDeadline<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            blocked: None,
        }
    }
}

impl<S> WriteDeadline<S> {
    /// Ready with an error once a blocked write has waited too long; pending
    /// (and the timer armed) otherwise.
    fn poll_blocked(
        blocked: &mut Option<Pin<Box<Sleep>>>,
        limit: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<io::Error> {
        let timer = blocked.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for the write timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn settle<T>(
        blocked: &mut Option<Pin<Box<Sleep>>>,
        limit: Duration,
        cx: &mut Context<'_>,
        done: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match done {
            Poll::Ready(result) => {
                *blocked = None;
                Poll::Ready(result)
            }
            Poll::Pending => Self::poll_blocked(blocked, limit, cx).map(Err),
        }
    }
}

impl<S: AsyncRead> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let done = this.inner.poll_write(cx, data);
        Self::settle(this.blocked, *this.limit, cx, done)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let done = this.inner.poll_write_vectored(cx, bufs);
        Self::settle(this.blocked, *this.limit, cx, done)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let done = this.inner.poll_flush(cx);
        Self::settle(this.blocked, *this.limit, cx, done)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let done = this.inner.poll_shutdown(cx);
        Self::settle(this.blocked, *this.limit, cx, done)
    }
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncWriteExt, time::Instant};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_limit_fails_and_one_that_moves_does_not() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut stream = WriteDeadline::new(near, Duration::from_secs(30));
        stream.write_all(&[0; 16]).await.unwrap();
        // The peer reads a little now and then: never blocked for 30 s at once.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap();
            }
            far
        });
        stream.write_all(&[0; 32]).await.unwrap();
        let _far = reader.await.unwrap();
        // Now it reads nothing at all.
        let started = Instant::now();
        let e = stream.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
