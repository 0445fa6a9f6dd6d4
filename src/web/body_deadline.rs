//! A deadline on reading request bodies, so a client that trickles its body (one byte every
//! few seconds) cannot hold a connection and a worker's attention forever. Once a body has
//! taken longer than `server.body_grace_seconds`, it must keep up an average of
//! `server.min_body_bytes_per_second` since its start, or reading it fails with 408: a short
//! JSON body has the whole grace period, a large import may take as long as its size needs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::{AppError, ErrorCode};

/// The body's pace: a grace period, then a minimum mean rate.
#[derive(Clone, Copy)]
pub struct Pace {
    pub grace: Duration,
    pub min_bytes_per_second: u64,
}

impl Pace {
    /// When the body, `received` bytes in, must have sent more.
    fn deadline(&self, started: Instant, received: u64) -> Instant {
        let earned = received as f64 / self.min_bytes_per_second.max(1) as f64;
        started + self.grace + Duration::from_secs_f64(earned.min(1e9))
    }
}

const TIMED_OUT: &str = "the request body arrived too slowly";

struct Paced {
    inner: Payload,
    pace: Pace,
    started: Instant,
    received: u64,
    timer: Pin<Box<Sleep>>,
    done: bool,
}

impl Stream for Paced {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.received += chunk.len() as u64;
                let next = this.pace.deadline(this.started, this.received);
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(other) => {
                this.done = other.is_none();
                Poll::Ready(other)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.done = true;
                    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, TIMED_OUT);
                    Poll::Ready(Some(Err(PayloadError::Io(e))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Middleware: puts the pace on every request's body.
pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let pace = req
        .app_data::<actix_web::web::Data<crate::app::AppState>>()
        .map(|s| Pace {
            grace: Duration::from_secs(s.config.server.body_grace_seconds),
            min_bytes_per_second: s.config.server.min_body_bytes_per_second,
        });
    if let Some(pace) = pace {
        let started = Instant::now();
        let paced = Paced {
            inner: req.take_payload(),
            pace,
            started,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(pace.deadline(started, 0))),
            done: false,
        };
        req.set_payload(Payload::Stream {
            payload: Box::pin(paced),
        });
    }
    next.call(req).await
}

/// The error for a body that could not be read: 408 when it came too slowly.
pub fn body_error(e: &PayloadError) -> AppError {
    if let PayloadError::Io(io) = e {
        if io.kind() == std::io::ErrorKind::TimedOut {
            return AppError::RequestTimeout;
        }
    }
    AppError::bad_request(ErrorCode::InvalidBody, e.to_string())
}
