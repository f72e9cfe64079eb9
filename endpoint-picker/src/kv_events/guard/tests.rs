use super::*;

fn greeting() -> Vec<u8> {
    let mut g = vec![0u8; GREETING_LEN];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 1;
    g[12..16].copy_from_slice(b"NULL");
    g
}

fn frame(flags: u8, len: u64) -> Vec<u8> {
    let mut f = Vec::new();
    if len > 255 {
        f.push(flags | LONG);
        f.extend_from_slice(&len.to_be_bytes());
    } else {
        f.extend([flags, len as u8]);
    }
    f.resize(f.len() + usize::try_from(len).unwrap_or(0).min(1 << 20), 7);
    f
}

fn stream(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut s = greeting();
    for p in parts {
        s.extend_from_slice(p);
    }
    s
}

const LIMITS: Limits = Limits {
    max_message: 1000,
    max_frames: 4,
    max_command: 100,
};

/// Scans `bytes` cut into pieces of `chunk` bytes: the verdict must not depend on the cuts.
fn verdict(bytes: &[u8], chunk: usize) -> Result<(), Violation> {
    let mut s = FrameScanner::new(LIMITS);
    bytes
        .chunks(chunk)
        .try_for_each(|c| s.scan(c))
        .map_err(|cut| cut.violation)
}

fn all_cuts(bytes: &[u8]) -> Result<(), Violation> {
    let whole = verdict(bytes, bytes.len().max(1));
    for chunk in [1, 2, 3, 7, 64, 65, 300] {
        assert_eq!(verdict(bytes, chunk), whole, "chunk {chunk}");
    }
    whole
}

#[test]
fn accepts_what_vllm_sends() {
    let ready = frame(COMMAND, 30);
    let msg = [frame(MORE, 12), frame(MORE, 8), frame(0, 900)];
    let mut parts = vec![ready];
    for _ in 0..3 {
        parts.extend(msg.iter().cloned());
    }
    parts.push(frame(0, 0));
    assert_eq!(all_cuts(&stream(&parts)), Ok(()));
}

#[test]
fn cuts_oversized_frames_and_messages_before_their_bodies() {
    // A header announcing 2^62 bytes is refused on its own, with no body behind it.
    let mut huge = stream(&[]);
    huge.push(LONG);
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    assert_eq!(all_cuts(&huge), Err(Violation::Oversized));
    let split = stream(&[frame(MORE, 600), frame(0, 401)]);
    assert_eq!(all_cuts(&split), Err(Violation::Oversized));
    assert_eq!(
        all_cuts(&stream(&[frame(COMMAND, 101)])),
        Err(Violation::Oversized)
    );
}

#[test]
fn cuts_too_many_frames_bad_flags_and_bad_greetings() {
    let many: Vec<_> = (0..5).map(|_| frame(MORE, 0)).collect();
    assert_eq!(all_cuts(&stream(&many)), Err(Violation::TooManyFrames));
    assert_eq!(all_cuts(&stream(&[vec![0x10, 0]])), Err(Violation::Flags));
    let mut old = greeting();
    old[10] = 2;
    assert_eq!(all_cuts(&old), Err(Violation::Greeting));
    assert_eq!(all_cuts(b"GET / HTTP/1.1\r\n"), Err(Violation::Greeting));
}

#[test]
fn message_budget_resets_between_messages() {
    let parts: Vec<_> = (0..20).map(|_| frame(0, 900)).collect();
    assert_eq!(all_cuts(&stream(&parts)), Ok(()));
}

#[test]
fn says_how_much_came_before_the_violation() {
    let mut bytes = stream(&[frame(COMMAND, 30), frame(0, 10)]);
    let clean = bytes.len();
    bytes.extend(huge_header());
    let mut s = FrameScanner::new(LIMITS);
    let cut = s.scan(&bytes).unwrap_err();
    // Everything up to the offending length byte may be forwarded.
    assert_eq!(cut.violation, Violation::Oversized);
    assert_eq!(cut.clean, clean + 8);
}

fn huge_header() -> Vec<u8> {
    let mut h = vec![LONG];
    h.extend_from_slice(&(1u64 << 62).to_be_bytes());
    h
}

#[tokio::test]
async fn pod_connections_probe_for_half_open_peers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stream = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    tune(&stream).unwrap();
    let sock = socket2::SockRef::from(&stream);
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
    assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
    assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
    assert!(stream.nodelay().unwrap());
}
