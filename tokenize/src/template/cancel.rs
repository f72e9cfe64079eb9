//! Stopping a render its caller gave up on from inside the template's loops: every loop iteration
//! calls [`tick`] (inserted by [`super::rewrite`]), and `range` yields nothing more once the
//! render is cancelled ([`crate::limits`] holds the flag).

use minijinja::{ErrorKind, Value};

use crate::limits;

/// Called at the start of every loop iteration ([`super::rewrite`]): fails once the render is
/// cancelled, so a loop over anything stops as soon as its caller gives up.
pub(super) fn tick() -> Result<bool, minijinja::Error> {
    if limits::cancelled() {
        // The kind a cancelled output write fails with: counted as a template limit the same way.
        return Err(minijinja::Error::new(
            ErrorKind::WriteFailure,
            "render cancelled",
        ));
    }
    Ok(false)
}

/// Python's `range` as minijinja's (at most 100,000 items), except that iteration ends when the
/// render is cancelled: a loop of loops stops as soon as its caller gives up.
pub(super) fn range(
    lower: i64,
    upper: Option<i64>,
    step: Option<i64>,
) -> Result<Value, minijinja::Error> {
    const MAX_ITEMS: i128 = 100_000;
    let (start, end) = match upper {
        Some(upper) => (lower, upper),
        None => (0, lower),
    };
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "cannot create range with step of 0",
        ));
    }
    let (start, end, step) = (i128::from(start), i128::from(end), i128::from(step));
    let span = if step > 0 { end - start } else { start - end };
    let len = if span <= 0 {
        0
    } else {
        (span + step.abs() - 1) / step.abs()
    };
    if len > MAX_ITEMS {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "range has too many elements",
        ));
    }
    let items = CancellableRange {
        next: start,
        step,
        left: len as usize,
    };
    Ok(Value::make_iterable(move || items.clone()))
}

/// The items of a [`range`]; yields nothing more once the render is cancelled.
#[derive(Debug, Clone)]
struct CancellableRange {
    next: i128,
    step: i128,
    left: usize,
}

impl Iterator for CancellableRange {
    type Item = i64;

    fn next(&mut self) -> Option<i64> {
        if self.left == 0 || limits::cancelled() {
            return None;
        }
        let item = i64::try_from(self.next).ok()?;
        self.left -= 1;
        self.next += self.step;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for CancellableRange {}
