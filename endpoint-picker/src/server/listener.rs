//! Admission for every TCP listener: at most `max` connections open at once, at most
//! `max_per_peer` from one IP address, and a deadline for a new connection's first bytes.
//!
//! A connection over a cap is accepted and closed at once (counted in
//! `kvpick_connections_refused_total{listener,reason}`) rather than left in the kernel's backlog,
//! so a flood never delays the gateway's own connections behind it in the queue. A connection
//! that has not sent [`PREFACE`] bytes within the deadline is closed (`reason="silent"`): an
//! idle socket holds a slot, so it must say something (an HTTP/2 preface, a TLS ClientHello, an
//! HTTP/1 request line) before it may keep one. Each connection's slot is released when its IO
//! is dropped, whatever ended it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use crate::telemetry as t;

/// Bytes a connection must send before the deadline: the HTTP/2 client preface's length (a TLS
/// ClientHello or an HTTP/1 request line is longer).
pub const PREFACE: usize = 24;

/// One listener's caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max: usize,
    /// Connections open at once from one IP address.
    pub max_per_peer: usize,
    /// How long a new connection may stay silent.
    pub first_bytes: Duration,
}

/// Counts a listener's open connections, overall and per peer.
#[derive(Debug)]
pub struct Gate {
    listener: &'static str,
    limits: ConnectionLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Gate {
    /// A gate for the listener named `listener` (its metric label).
    pub fn new(listener: &'static str, limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            listener,
            limits,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a slot for a connection from `peer`, or counts why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock();
        let refused = if open.0 >= self.limits.max {
            Some("too_many")
        } else if open.1.get(&peer).copied().unwrap_or(0) >= self.limits.max_per_peer {
            Some("too_many_from_peer")
        } else {
            None
        };
        if let Some(reason) = refused {
            drop(open);
            self.refuse(reason);
            return None;
        }
        open.0 += 1;
        *open.1.entry(peer).or_insert(0) += 1;
        metrics::gauge!(t::CONNECTIONS_OPEN, "listener" => self.listener).increment(1.0);
        Some(Slot {
            gate: self.clone(),
            peer,
        })
    }

    fn refuse(&self, reason: &'static str) {
        metrics::counter!(t::CONNECTIONS_REFUSED, "listener" => self.listener, "reason" => reason)
            .increment(1);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().0
    }

    /// Accepts on `listener` forever, yielding admitted connections (with `TCP_NODELAY`).
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> impl Stream<Item = Admitted<TcpStream>> + Send + 'static {
        futures::stream::unfold((self, listener), |(gate, listener)| async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(listener = gate.listener, error = %e, "accept failed");
                        // Out of descriptors and the like: let the condition pass.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if let Some(admitted) = gate.wrap(tcp, peer) {
                    return Some((admitted, (gate, listener)));
                }
            }
        })
    }

    /// Admits `io` from `peer` (dropping it, and so closing it, when refused).
    pub fn wrap<IO>(self: &Arc<Self>, io: IO, peer: SocketAddr) -> Option<Admitted<IO>> {
        let slot = self.admit(peer.ip())?;
        Some(Admitted {
            io,
            _slot: slot,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(self.limits.first_bytes))),
        })
    }
}

/// One open connection's place under its gate, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<Gate>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.peer);
            }
        }
        metrics::gauge!(t::CONNECTIONS_OPEN, "listener" => self.gate.listener).decrement(1.0);
    }
}

/// An admitted connection: its IO, its slot, and the deadline for its first bytes.
#[derive(Debug)]
pub struct Admitted<IO> {
    io: IO,
    _slot: Slot,
    read: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> Admitted<IO> {
    /// The connection underneath (e.g. to peek at its first bytes).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            if let Poll::Ready(Ok(())) = polled {
                this.read += buf.filled().len() - before;
            }
            if this.read >= PREFACE {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                this.deadline = None;
                this._slot.gate.refuse("silent");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request bytes before the deadline",
                )));
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, max_per_peer: usize) -> ConnectionLimits {
        ConnectionLimits {
            max,
            max_per_peer,
            first_bytes: Duration::from_secs(10),
        }
    }

    #[test]
    fn caps_hold_overall_and_per_peer_and_slots_come_back() {
        let gate = Gate::new("test", limits(3, 2));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let s1 = gate.admit(a).unwrap();
        let _s2 = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_none(), "a third from one peer");
        let _s3 = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_none(), "a fourth overall");
        drop(s1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(a).is_some());
    }
}
