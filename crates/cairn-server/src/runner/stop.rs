//! The stop signal of a session: set once, read by async code and by engine threads.

use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use tokio::sync::watch;

/// Why a session is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// A user asked.
    User,
    /// The job's backup window closed at this time.
    WindowClosed(Timestamp),
    /// The server is shutting down.
    Shutdown,
}

impl StopReason {
    /// The log line of a task that this stop ended.
    pub(crate) fn log_text(self) -> String {
        match self {
            StopReason::User => "stopped by a user".to_string(),
            StopReason::WindowClosed(at) => format!("backup window closed at {at}"),
            StopReason::Shutdown => "stopped: the server is shutting down".to_string(),
        }
    }
}

/// Set once by [`request`](Self::request); the first reason wins.
pub(crate) struct StopSignal {
    flag: AtomicBool,
    reason: watch::Sender<Option<StopReason>>,
}

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal {
            flag: AtomicBool::new(false),
            reason: watch::Sender::new(None),
        }
    }
}

impl StopSignal {
    /// Asks the session to stop (a second request keeps the first reason).
    pub(crate) fn request(&self, reason: StopReason) {
        self.reason.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for (cheap: engine threads poll it per block).
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// The reason, once stopped.
    pub(crate) fn reason(&self) -> Option<StopReason> {
        *self.reason.borrow()
    }

    /// Completes when a stop is requested.
    pub(crate) async fn wait(&self) {
        let mut rx = self.reason.subscribe();
        // The sender lives in `self`, so this cannot fail while we borrow it.
        let _ = rx.wait_for(Option::is_some).await;
    }
}
