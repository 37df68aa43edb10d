//! Critical tasks: the parts the box cannot run without — the engine
//! thread, both listeners, delivery and the step-timer tick. Each holds a
//! [`Guard`]; when a guard is dropped before the box was asked to stop
//! (the task returned early) or while panicking, the [`Watch`] hears which
//! task ended and why, and the supervisor ends the process with a non-zero exit so
//! the service manager restarts the box (STYLE: a dead critical task ends
//! the process). Release builds abort on any panic (`panic = "abort"`), so
//! this path is what catches a task that *returns* unexpectedly, and a
//! panicking task in builds that unwind.

use std::fmt;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A critical task ended while the box was meant to be running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("critical task `{task}` {how}")]
pub struct TaskDied {
    /// Which task (`relay engine`, `core-side listener`, …).
    pub task: String,
    pub how: How,
}

/// How a critical task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// It returned although nobody asked it to stop.
    Returned,
    /// It panicked (the panic message was logged by the panic hook).
    Panicked,
}

impl fmt::Display for How {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            How::Returned => "ended unexpectedly",
            How::Panicked => "panicked",
        })
    }
}

/// Hands out guards and hears when one falls.
#[derive(Debug)]
pub struct Watch {
    tx: mpsc::UnboundedSender<TaskDied>,
    rx: mpsc::UnboundedReceiver<TaskDied>,
    stopping: CancellationToken,
}

impl Watch {
    /// A watch whose tasks may end without a report once `stopping` is
    /// cancelled (the one shutdown path cancels it first).
    pub fn new(stopping: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Watch { tx, rx, stopping }
    }

    /// A guard for the task named `task`, to be moved into it.
    pub fn guard(&self, task: impl Into<String>) -> Guard {
        self.guards().guard(task)
    }

    /// A handle that makes guards, for a task that starts critical tasks
    /// of its own (delivery starts one worker per destination).
    pub fn guards(&self) -> Guards {
        Guards {
            tx: self.tx.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// Waits for the first critical task to end. Never returns while every
    /// task runs (the watch keeps a sender of its own).
    pub async fn died(&mut self) -> TaskDied {
        match self.rx.recv().await {
            Some(died) => died,
            // Unreachable while `self.tx` lives; wait forever rather than
            // invent a death.
            None => std::future::pending().await,
        }
    }
}

/// Makes guards reporting to one [`Watch`].
#[derive(Debug, Clone)]
pub struct Guards {
    tx: mpsc::UnboundedSender<TaskDied>,
    stopping: CancellationToken,
}

impl Guards {
    /// A guard for the task named `task`, to be moved into it.
    pub fn guard(&self, task: impl Into<String>) -> Guard {
        Guard {
            task: task.into(),
            tx: self.tx.clone(),
            stopping: self.stopping.clone(),
        }
    }
}

/// Reports its task's end when dropped, unless the end was asked for.
#[derive(Debug)]
pub struct Guard {
    task: String,
    tx: mpsc::UnboundedSender<TaskDied>,
    stopping: CancellationToken,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let how = if std::thread::panicking() {
            How::Panicked
        } else if self.stopping.is_cancelled() {
            return;
        } else {
            How::Returned
        };
        tracing::error!(task = %self.task, %how, "critical task ended");
        let _ = self.tx.send(TaskDied {
            task: std::mem::take(&mut self.task),
            how,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_early_end_is_heard_and_one_after_the_stop_is_not() {
        let stopping = CancellationToken::new();
        let mut watch = Watch::new(stopping.clone());
        drop(watch.guard("relay engine"));
        let died = watch.died().await;
        assert_eq!(died.task, "relay engine");
        assert_eq!(died.how, How::Returned);
        stopping.cancel();
        drop(watch.guard("delivery"));
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), watch.died()).await;
        assert!(quiet.is_err(), "an end after the stop is not a death");
    }

    #[tokio::test]
    async fn a_panicking_thread_is_reported_as_panicked() {
        let mut watch = Watch::new(CancellationToken::new());
        let guard = watch.guard("relay engine");
        let thread = std::thread::spawn(move || {
            let _guard = guard;
            panic!("injected");
        });
        assert!(thread.join().is_err());
        assert_eq!(watch.died().await.how, How::Panicked);
    }
}
