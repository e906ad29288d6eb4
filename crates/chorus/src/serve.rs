//! The HTTP server: accepts connections within limits and serves the router on each.
//!
//! `axum::serve` has no limits of its own: a client that opens connections and sends
//! one header line each (20,100 of them, unauthenticated) held every file descriptor
//! until accepts failed and `/healthz` stopped answering. Here every connection must
//! finish its request head within `header_timeout` (idle keep-alive connections
//! included: hyper's timer runs while it waits for the next head), and connections are
//! counted, in total and per client address; one over either limit is closed as soon
//! as it is accepted. A connection keeps its place while it lives, through an upgrade
//! to WebSocket too.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How many connections the server holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections at once, in total.
    pub total: usize,
    /// Connections at once from one client address (0: no limit).
    pub per_address: usize,
    /// Time a client has to send a request's head, from the moment the server waits
    /// for it.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown`, then waits for requests in progress
/// to finish (WebSocket sessions are not waited for: they close on their own
/// signal).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let counts = Counts::new(limits);
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        let Some(slot) = counts.admit(peer.ip()) else {
            // Dropping the stream closes it: the client learns at once, and the
            // descriptor is free again.
            continue;
        };
        // Frames are small and latency-bound: without TCP_NODELAY, Nagle's algorithm
        // and delayed ACKs held many of them back ~40 ms (p99 47 ms -> 13 ms at
        // 2000 msg/s once set).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let io = TokioIo::new(Counted {
            stream,
            _slot: slot,
        });
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let connection = http.serve_connection(io, service).with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = shutdown.cancelled() => {
                    // Finish the request in progress, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Waits a little after a failed accept: out of descriptors, the listener would
/// otherwise fail again at once, in a busy loop.
async fn accept_failed(e: &io::Error) {
    metrics::counter!("chorus_http_accept_errors_total").increment(1);
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Connections open, in total and per client address.
struct Counts {
    limits: ConnectionLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Counts {
    fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: Mutex::default(),
        })
    }

    /// A place for a connection from `address`, unless a limit is reached.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_address) = &mut *open;
        let from_address = by_address.get(&address).copied().unwrap_or(0);
        let refused = if *total >= self.limits.total {
            Some("total")
        } else if self.limits.per_address > 0 && from_address >= self.limits.per_address {
            Some("per_address")
        } else {
            None
        };
        if let Some(limit) = refused {
            metrics::counter!("chorus_http_connections_refused_total", "limit" => limit)
                .increment(1);
            tracing::debug!(%address, limit, "connection refused");
            return None;
        }
        *total += 1;
        by_address.insert(address, from_address + 1);
        metrics::gauge!("chorus_http_connections").set(*total as f64);
        Some(Slot {
            counts: Arc::clone(self),
            address,
        })
    }

    fn release(&self, address: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_address) = &mut *open;
        *total -= 1;
        if let Some(n) = by_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                by_address.remove(&address);
            }
        }
        metrics::gauge!("chorus_http_connections").set(*total as f64);
    }
}

/// A connection's place in the counts, given back when it is dropped.
struct Slot {
    counts: Arc<Counts>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.release(self.address);
    }
}

/// A connection that holds its [`Slot`] for as long as it lives, wherever it goes
/// (hyper hands it to the WebSocket session on upgrade).
struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connections the server may hold when the configuration leaves it to the machine:
/// the open-files limit, raised as far as the system allows, less what the node needs
/// besides (database and broker connections, files, the registry).
pub fn automatic_total() -> usize {
    /// Descriptors kept for everything but client connections.
    const RESERVE: u64 = 512;
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    usize::try_from(limit.saturating_sub(RESERVE).max(64)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: usize, per_address: usize) -> Arc<Counts> {
        Counts::new(ConnectionLimits {
            total,
            per_address,
            header_timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let counts = counts(10, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = counts.admit(a).unwrap();
        let _second = counts.admit(a).unwrap();
        assert!(counts.admit(a).is_none());
        assert!(counts.admit(b).is_some(), "another address is not affected");
        drop(first);
        assert!(
            counts.admit(a).is_some(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn the_total_holds_across_addresses_and_places_come_back() {
        let counts = counts(3, 0);
        let held: Vec<Slot> = (1..=3)
            .map(|i| counts.admit(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert!(counts.admit(IpAddr::from([10, 0, 0, 9])).is_none());
        drop(held);
        let open = counts.open.lock().unwrap();
        assert_eq!((open.0, open.1.len()), (0, 0), "nothing left counted");
    }
}
