//! A frame-checking relay between ZMQ peers and `zeromq`'s sockets: the one place where what a
//! peer can make us buffer is bounded.
//!
//! `zeromq` 0.7 has no `ZMQ_MAXMSGSIZE`. Its decoder reserves a frame's announced length before
//! reading it, so a 10-byte frame header announcing 2^62 bytes aborts the whole process on the
//! failed allocation (measured), a 1 GiB announcement costs 1 GiB, and a multipart message may
//! hold any number of frames. Every peer connection therefore reaches `zeromq` through this
//! relay over loopback: it reads the ZMTP 3 frame headers as they pass (bodies are counted, not
//! inspected or buffered) and cuts the connection when a frame or a message would exceed
//! [`Limits`], before `zeromq` sees the header. Everything else is forwarded unchanged, so the
//! handshake, subscriptions and framing stay `zeromq`'s. Costs one loopback copy.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a peer may send.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Largest message, all frames together, in bytes.
    pub max_message: u64,
    /// Most frames in one message (vLLM sends 3 or 4).
    pub max_frames: u32,
    /// Largest command frame (READY, PING, SUBSCRIBE...).
    pub max_command: u64,
}

impl Limits {
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message: max_message as u64,
            max_frames: 16,
            max_command: 64 << 10,
        }
    }
}

/// Where and why a stream broke a limit.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Bytes of the scanned chunk before the offending one.
    pub clean: usize,
    pub violation: Violation,
}

/// Why a connection was cut.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// Not a ZMTP 3 greeting.
    Greeting,
    /// Reserved frame flag bits set.
    Flags,
    /// A frame or message over [`Limits::max_message`], or a command over its limit.
    Oversized,
    /// More frames in one message than [`Limits::max_frames`].
    TooManyFrames,
}

const GREETING_LEN: usize = 64;
const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

#[derive(Copy, Clone, Debug)]
enum State {
    Greeting(usize),
    Flags,
    Length { flags: u8, need: u8, acc: u64 },
    Body { flags: u8, left: u64 },
}

/// Follows the frame structure of one direction of a ZMTP 3 stream.
#[derive(Debug)]
pub(crate) struct FrameScanner {
    limits: Limits,
    state: State,
    message_bytes: u64,
    message_frames: u32,
    /// Frames completed so far (commands included).
    frames: u64,
}

impl FrameScanner {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Greeting(0),
            message_bytes: 0,
            message_frames: 0,
            frames: 0,
        }
    }

    /// Whether the peer has sent its greeting and a whole first frame (ZMTP's READY command):
    /// the handshake is done on its side.
    pub fn handshaken(&self) -> bool {
        self.frames > 0
    }

    /// Checks the next bytes of the stream. On a violation, says how many of them came before
    /// it (those may be forwarded: they complete what the peer sent before breaking a limit).
    pub fn scan(&mut self, bytes: &[u8]) -> Result<(), Cut> {
        let mut rest = bytes;
        self.advance(&mut rest).map_err(|violation| Cut {
            clean: bytes.len() - rest.len(),
            violation,
        })
    }

    /// Consumes `bytes`; on error it is left at the offending byte.
    fn advance(&mut self, bytes: &mut &[u8]) -> Result<(), Violation> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match self.state {
                State::Greeting(seen) => {
                    let ok = match seen {
                        0 => byte == 0xff,
                        10 => byte >= 3, // major version: ZMTP 3
                        _ => true,
                    };
                    if !ok {
                        return Err(Violation::Greeting);
                    }
                    self.state = if seen + 1 == GREETING_LEN {
                        State::Flags
                    } else {
                        State::Greeting(seen + 1)
                    };
                }
                State::Flags => {
                    if byte & !(MORE | LONG | COMMAND) != 0 {
                        return Err(Violation::Flags);
                    }
                    let need = if byte & LONG != 0 { 8 } else { 1 };
                    self.state = State::Length {
                        flags: byte,
                        need,
                        acc: 0,
                    };
                }
                State::Length { flags, need, acc } => {
                    let acc = (acc << 8) | u64::from(byte);
                    self.state = if need > 1 {
                        State::Length {
                            flags,
                            need: need - 1,
                            acc,
                        }
                    } else {
                        self.frame(flags, acc)?
                    };
                }
                State::Body { flags, left } => {
                    let n = left.min(bytes.len() as u64);
                    *bytes = &bytes[n as usize..];
                    self.state = self.after_body(flags, left - n);
                    continue;
                }
            }
            *bytes = rest;
        }
        Ok(())
    }

    fn frame(&mut self, flags: u8, len: u64) -> Result<State, Violation> {
        if flags & COMMAND != 0 {
            if len > self.limits.max_command {
                return Err(Violation::Oversized);
            }
        } else {
            self.message_frames += 1;
            self.message_bytes = self.message_bytes.saturating_add(len);
            if self.message_frames > self.limits.max_frames {
                return Err(Violation::TooManyFrames);
            }
            if self.message_bytes > self.limits.max_message {
                return Err(Violation::Oversized);
            }
        }
        Ok(self.after_body(flags, len))
    }

    fn after_body(&mut self, flags: u8, left: u64) -> State {
        if left > 0 {
            return State::Body { flags, left };
        }
        self.frames += 1;
        if flags & (COMMAND | MORE) == 0 {
            self.message_bytes = 0;
            self.message_frames = 0;
        }
        State::Flags
    }
}

/// How a relayed connection ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// One side closed or failed, or the relay was cancelled.
    Closed,
    /// The peer broke a limit and was cut off.
    Violation(Violation),
    /// The peer did not finish its handshake, or stayed silent, for too long (see [`Deadlines`]).
    TimedOut,
}

/// How long a peer that connected to us may take (bind mode; pods we dial have none).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// From accept until the peer's greeting and first frame (ZMTP READY) are in.
    pub handshake: Option<Duration>,
    /// Longest silence from the peer after that. A vLLM publisher that had nothing to say
    /// reconnects at once (ZMQ's reconnect interval is 100 ms).
    pub idle: Option<Duration>,
}

/// Relays `peer` ⇄ `local` until either side closes, `cancel` fires, the peer breaks a limit or
/// misses a deadline.
pub(crate) async fn relay(
    peer: TcpStream,
    local: TcpStream,
    limits: Limits,
    deadlines: Deadlines,
    cancel: CancellationToken,
) -> RelayEnd {
    let (mut peer_rx, mut peer_tx) = peer.into_split();
    let (mut local_rx, mut local_tx) = local.into_split();
    let handshake_by = deadlines.handshake.map(|d| tokio::time::Instant::now() + d);
    let inbound = async {
        let mut scanner = FrameScanner::new(limits);
        let mut buf = vec![0u8; 32 << 10];
        loop {
            let read = peer_rx.read(&mut buf);
            let read = match (scanner.handshaken(), handshake_by, deadlines.idle) {
                (false, Some(at), _) => tokio::time::timeout_at(at, read).await,
                (true, _, Some(idle)) => tokio::time::timeout(idle, read).await,
                _ => Ok(read.await),
            };
            let n = match read {
                Err(_) => return RelayEnd::TimedOut,
                Ok(Ok(0) | Err(_)) => return RelayEnd::Closed,
                Ok(Ok(n)) => n,
            };
            if let Err(cut) = scanner.scan(&buf[..n]) {
                let _ = local_tx.write_all(&buf[..cut.clean]).await;
                return RelayEnd::Violation(cut.violation);
            }
            if local_tx.write_all(&buf[..n]).await.is_err() {
                return RelayEnd::Closed;
            }
        }
    };
    tokio::select! {
        end = inbound => end,
        _ = tokio::io::copy(&mut local_rx, &mut peer_tx) => RelayEnd::Closed,
        () = cancel.cancelled() => RelayEnd::Closed,
    }
}

/// A connection to a remote ZMQ peer that a local `zeromq` socket reaches at [`Link::endpoint`].
#[derive(Debug)]
pub(crate) struct Link {
    /// `tcp://127.0.0.1:port`, for the `zeromq` socket to connect to (once).
    pub endpoint: String,
    task: Option<JoinHandle<RelayEnd>>,
    end: Option<RelayEnd>,
    cancel: CancellationToken,
}

impl Link {
    /// Waits until the relayed connection ends (cancel-safe; returns at once after that).
    pub async fn ended(&mut self) -> RelayEnd {
        if let Some(task) = self.task.as_mut() {
            let end = task.await.unwrap_or(RelayEnd::Closed);
            self.task = None;
            self.end = Some(end);
        }
        self.end.unwrap_or(RelayEnd::Closed)
    }

    /// Ends the relay, waits for it, and says how it ended (a violation, if it came first).
    pub async fn close(mut self) -> RelayEnd {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            self.end = Some(task.await.unwrap_or(RelayEnd::Closed));
        }
        self.end.unwrap_or(RelayEnd::Closed)
    }
}

impl Drop for Link {
    /// A link dropped unclosed (its owner was cancelled) still ends its relay at once.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// TCP keepalive on every pod connection: a pod gone without a FIN (node lost, partition) leaves
/// a half-open connection that no read would ever end; after this long idle the kernel probes it.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Between unanswered probes; after [`KEEPALIVE_PROBES`] of them (≈ 45 s in all) the connection
/// fails, the session ends and the subscriber redials.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// Prepares a pod connection: no Nagle delay, and keepalive probes to find it dead when half open.
pub(crate) fn tune(peer: &TcpStream) -> io::Result<()> {
    peer.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(peer).set_tcp_keepalive(&keepalive)
}

/// Connects to `remote` (bounded by `timeout`) and relays it to a one-shot loopback listener.
pub(crate) async fn dial(
    remote: SocketAddr,
    limits: Limits,
    timeout: Duration,
) -> io::Result<Link> {
    let peer = tokio::time::timeout(timeout, TcpStream::connect(remote))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tune(&peer)?;
    link(peer, limits, Deadlines::default(), timeout).await
}

/// Relays an established `peer` connection to a one-shot loopback listener for a local `zeromq`
/// socket to connect to within `timeout`. The listener takes one connection and closes: whoever
/// is first gets the peer's stream, so nothing else on the host can speak as this peer.
pub(crate) async fn link(
    peer: TcpStream,
    limits: Limits,
    deadlines: Deadlines,
    timeout: Duration,
) -> io::Result<Link> {
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let endpoint = format!("tcp://{}", listener.local_addr()?);
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let task = tokio::spawn(async move {
        let accepted = tokio::select! {
            a = tokio::time::timeout(timeout, listener.accept()) => a,
            () = token.cancelled() => return RelayEnd::Closed,
        };
        match accepted {
            Ok(Ok((local, _))) => {
                drop(listener);
                let _ = local.set_nodelay(true);
                relay(peer, local, limits, deadlines, token).await
            }
            _ => RelayEnd::Closed,
        }
    });
    Ok(Link {
        endpoint,
        task: Some(task),
        end: None,
        cancel,
    })
}

#[cfg(test)]
mod tests;
