//! Holding ingestion back until an index bootstrap is done: an endpoint opened before the
//! bootstrap left its anchor would replay from the pod's oldest buffered batch and never learn
//! what the peer's dump held, and its first batch would reset what the dump restored. The
//! server releases the hold once the bootstrap ran (with Kubernetes discovery, after the first
//! sync, when the endpoints are known) and waits until ingestion has opened every endpoint.

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The server's end: lets ingestion open its endpoints.
#[derive(Debug)]
pub struct Release {
    go: oneshot::Sender<()>,
    opened: oneshot::Receiver<()>,
}

/// Ingestion's end: its manager opens nothing until released.
#[derive(Debug)]
pub struct Hold {
    go: oneshot::Receiver<()>,
    opened: oneshot::Sender<()>,
}

/// A hold for ingestion and the release that ends it.
pub fn hold() -> (Hold, Release) {
    let (go_tx, go_rx) = oneshot::channel();
    let (opened_tx, opened_rx) = oneshot::channel();
    (
        Hold {
            go: go_rx,
            opened: opened_tx,
        },
        Release {
            go: go_tx,
            opened: opened_rx,
        },
    )
}

impl Release {
    /// Lets ingestion open the endpoints the pool has now; returns once each has been opened
    /// (its worker took its anchor and published its state), or once ingestion has stopped.
    pub async fn open(self) {
        let _ = self.go.send(());
        let _ = self.opened.await;
    }
}

/// Told when the endpoints of the release's moment are open.
pub(super) type Opened = oneshot::Sender<()>;

impl Hold {
    /// Waits for the release; a release dropped unused counts as one (ingestion is never held
    /// for good). `None`: `cancel` fired first.
    pub(super) async fn wait(self, cancel: &CancellationToken) -> Option<Opened> {
        let Self { go, opened } = self;
        tokio::select! {
            () = cancel.cancelled() => None,
            _ = go => Some(opened),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_waits_for_the_acknowledgement() {
        let (h, r) = hold();
        let cancel = CancellationToken::new();
        let waiter = tokio::spawn(async move { h.wait(&cancel).await });
        let opening = tokio::spawn(r.open());
        let opened = waiter.await.unwrap().expect("released");
        assert!(!opening.is_finished());
        opened.send(()).unwrap();
        opening.await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_release_releases_and_cancel_does_not() {
        let (h, r) = hold();
        drop(r);
        assert!(h.wait(&CancellationToken::new()).await.is_some());
        let (h, _r) = hold();
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert!(h.wait(&cancel).await.is_none());
    }
}
