//! Body plumbing: one boxed body type for everything the engine returns, and buffering with
//! a limit that can give back what it read when the limit is hit.

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Any error a body or a service may fail with. The engine looks for [`BodyTimedOut`] and
/// [`UpstreamError`](crate::UpstreamError) in its source chain to tell the cases apart.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type the engine takes and returns: any body of `Bytes`, boxed. It is not
/// `Sync`, since hyper's and axum's bodies need not be.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body of exactly `bytes`, in one frame.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with no bytes.
pub fn empty() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The result of reading a body up to a limit.
pub enum Buffered<B> {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// The limit was passed: what was read so far and the unread rest, so a caller can still
    /// stream the whole body on.
    TooLarge {
        /// What was read before the limit was passed; empty when the body's declared length
        /// was already over it.
        read: Bytes,
        /// The body, with `read` already taken from it.
        rest: B,
    },
}

/// Reads `body` into memory unless it is longer than `limit` bytes. Trailers are dropped:
/// neither the fingerprint nor a stored response keeps them.
pub async fn buffer<B>(mut body: B, limit: usize) -> Result<Buffered<B>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Ok(Buffered::TooLarge {
            read: Bytes::new(),
            rest: body,
        });
    }
    let mut buf = BytesMut::new();
    // Stop as soon as the body says it is complete (its declared length has arrived) instead
    // of waiting for an end-of-stream poll, which costs hyper another wake-up of its
    // connection task.
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(Into::into)?;
        if let Ok(data) = frame.into_data() {
            if buf.is_empty() && body.is_end_stream() && data.len() <= limit {
                // The whole body in one frame: keep it without a copy.
                return Ok(Buffered::Complete(data));
            }
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(Buffered::TooLarge {
                    read: buf.freeze(),
                    rest: body,
                });
            }
        }
    }
    Ok(Buffered::Complete(buf.freeze()))
}

/// A body that yields `prefix` first, then the frames of `rest`.
pub struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> Prefixed<B> {
    /// A body of `prefix`, then `rest`: how a [`Buffered::TooLarge`] is put back together.
    pub fn new(prefix: Bytes, rest: B) -> Self {
        Prefixed {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            rest,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        hint.set_lower(hint.lower() + extra);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

/// A body sent nothing for longer than it was allowed to, or took longer than allowed in all.
/// Found in an error's source chain, it tells a stalled peer from a broken one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyTimedOut {
    /// No data arrived for the duration carried (an [`IdleTimeout`]): 408 for a client's
    /// body, an unknown outcome for an upstream's.
    #[error("no data arrived for {0:?}")]
    Idle(Duration),
    /// A keyed request's body was still incomplete after the duration carried
    /// ([`Engine::with_body_timeout`](crate::Engine::with_body_timeout)): 408, and nothing
    /// was claimed.
    #[error("the body was not complete after {0:?}")]
    Total(Duration),
}

impl BodyTimedOut {
    /// The timeout somewhere in `err`'s source chain, if that is what ended it.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<BodyTimedOut> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
                return Some(*t);
            }
            cur = e.source();
        }
        None
    }
}

/// Fails a body that sends nothing for `idle`: a peer that stalls in the middle of a body
/// (a slow client's upload, an upstream after its headers) must not hold a connection, a
/// request and its key forever.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    /// Armed only while waiting for the peer: a body that is ready when polled, the usual
    /// case, never registers a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner` so that it fails with [`BodyTimedOut::Idle`] once it has yielded
    /// nothing for `idle`; every frame starts the wait again. It must be polled inside a
    /// Tokio runtime with the time driver enabled.
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            timer: None,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut::Idle(idle).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn buffers_within_limit_and_hands_back_the_rest() {
        let b = full(Bytes::from_static(b"hello"));
        assert!(matches!(buffer(b, 5).await.unwrap(), Buffered::Complete(x) if x == "hello"));
        let b = full(Bytes::from_static(b"hello!"));
        match buffer(b, 5).await.unwrap() {
            Buffered::TooLarge { read, rest } => {
                let whole = Prefixed::new(read, rest)
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes();
                assert_eq!(whole, "hello!");
            }
            Buffered::Complete(_) => panic!("over the limit"),
        }
    }

    /// A body whose frames come from a channel, so a test decides when each arrives.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        (tx, ChannelBody(rx))
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_body_times_out_and_a_steady_trickle_does_not() {
        let (tx, body) = channel_body();
        let mut body = IdleTimeout::new(body, Duration::from_secs(10));
        let trickle = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(9)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
            // Then it stalls, the sender kept alive.
            std::future::pending::<()>().await;
            drop(tx);
        });
        let started = tokio::time::Instant::now();
        for _ in 0..5 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
        }
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(
            BodyTimedOut::find(err.as_ref()),
            Some(BodyTimedOut::Idle(Duration::from_secs(10)))
        );
        assert_eq!(started.elapsed(), Duration::from_secs(45 + 10));
        trickle.abort();
    }
}
