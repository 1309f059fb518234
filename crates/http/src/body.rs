//! Body plumbing: one boxed body type for everything the engine returns, and buffering with
//! a limit that can give back what it read when the limit is hit.

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

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
    TooLarge { read: Bytes, rest: B },
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
}
