//! Limits on chat-template rendering. A template is a program, and a request's own `chat_template`
//! is a program written by a client: one render must not be able to take the process's memory, a
//! tokenization slot for good, or shutdown hostage.
//!
//! - A request's own template is refused unless the operator opts in (`--trust-request-chat-template`,
//!   as vLLM's flag of the same name); a refused request is routed without exact tokens.
//! - Every render (the model's templates too) runs with minijinja fuel: one budget charged per
//!   instruction and per byte created, so it bounds both the work and the bytes a render can
//!   allocate (about 64 bytes per unit), and a single huge allocation is refused before it happens.
//! - The rendered prompt is capped; so is anything our own filters build (`tojson`, `str()`).
//! - A render whose caller gave up (deadline, closed stream, shutdown) stops: every write to the
//!   output, every step of `range`, every `tojson` and the start of every loop iteration (over any
//!   iterable: the template source is rewritten so each `{% for %}` body first calls a check)
//!   check the caller's [`Cancel`]. Only a single built-in filter over a huge value (`join`, `sort`
//!   of 100k items) runs to its end, within its fuel.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Default fuel per render: about 1.5M instructions or 96 MiB of created data. Real templates spend
/// about one unit per 20 bytes of conversation (an 8 MiB chat with tools took ~400k in the tests),
/// so the largest body the picker reads (16 MiB) fits with room to spare, while one render's
/// allocations stay under 96 MiB and its CPU time in the tens of milliseconds.
pub const DEFAULT_FUEL: u64 = 1_500_000;
/// Default cap on a rendered prompt (and on one `tojson`/`str()` result): 32 MiB, twice the largest
/// request body the endpoint picker reads.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 32 << 20;

/// How templates may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplatePolicy {
    /// Render a request's own `chat_template` source (vLLM's `--trust-request-chat-template`).
    /// Off by default: such a request gets [`crate::Error::UntrustedTemplate`]. Naming one of the
    /// model's own templates is always allowed.
    pub trust_request_template: bool,
    /// minijinja fuel per render.
    pub fuel: u64,
    /// Largest rendered prompt, in bytes.
    pub max_output_bytes: usize,
}

impl Default for TemplatePolicy {
    fn default() -> Self {
        Self {
            trust_request_template: false,
            fuel: DEFAULT_FUEL,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Set by a render's caller when its result is no longer wanted; cheap to check.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag not yet set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every render under this flag to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sets its flag when dropped: a caller that goes away (timeout, dropped future) stops its render.
#[derive(Debug)]
pub struct CancelOnDrop(pub Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

thread_local! {
    /// The flags of the render running on this thread (renders are synchronous, one per thread).
    static CURRENT: RefCell<Vec<Cancel>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `flags` as this thread's cancel flags (restored afterwards, also on unwind).
pub fn with_cancel<R>(flags: &[Cancel], f: impl FnOnce() -> R) -> R {
    struct Restore(Vec<Cancel>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = std::mem::take(&mut self.0);
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let previous = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), flags.to_vec()));
    let _restore = Restore(previous);
    f()
}

/// Whether the render on this thread should stop.
pub(crate) fn cancelled() -> bool {
    CURRENT.with(|c| c.borrow().iter().any(Cancel::is_cancelled))
}

/// A render's output: refuses to grow past its cap, and fails once the render is cancelled.
#[derive(Debug)]
pub(crate) struct CappedOutput {
    pub buf: Vec<u8>,
    max: usize,
}

impl CappedOutput {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }
}

impl io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if cancelled() {
            return Err(io::Error::other("render cancelled"));
        }
        if self.buf.len().saturating_add(data.len()) > self.max {
            return Err(io::Error::other(format!(
                "rendered prompt over {} bytes",
                self.max
            )));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Thread-local cap on what our own filters build (`tojson`, `str()` of containers) during a
/// render: the render's output cap.
pub(crate) fn value_cap() -> usize {
    VALUE_CAP.with(|c| *c.borrow())
}

thread_local! {
    static VALUE_CAP: RefCell<usize> = const { RefCell::new(DEFAULT_MAX_OUTPUT_BYTES) };
}

/// Runs `f` with `cap` as [`value_cap`].
pub(crate) fn with_value_cap<R>(cap: usize, f: impl FnOnce() -> R) -> R {
    let previous = VALUE_CAP.with(|c| std::mem::replace(&mut *c.borrow_mut(), cap));
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0;
            VALUE_CAP.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(previous);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn output_cap_and_cancel() {
        let mut out = CappedOutput::new(4);
        assert!(out.write_all(b"abcd").is_ok());
        assert!(out.write_all(b"e").is_err(), "over the cap");
        let flag = Cancel::new();
        with_cancel(std::slice::from_ref(&flag), || {
            let mut out = CappedOutput::new(100);
            assert!(out.write_all(b"a").is_ok());
            flag.cancel();
            assert!(cancelled());
            assert!(out.write_all(b"b").is_err(), "cancelled");
        });
        assert!(!cancelled(), "the flags are this render's only");
    }
}
