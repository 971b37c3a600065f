//! The watchers' back-off, cut short when the API server answers again.
//!
//! kube-rs's [`StreamBackoff`](kube::runtime::utils::StreamBackoff) sleeps
//! out a back-off once it has started: after an outage of a few seconds a
//! watcher may wait 20 s more while the server already answers. This is the
//! same policy (kube-rs's [`DefaultBackoff`], client-go's parameters, reset
//! on every event) with one addition: the recovery probe's signal ends the
//! wait at once and resets the back-off.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use kube::runtime::{utils::Backoff as _, watcher::DefaultBackoff};
use tokio::sync::watch;

/// What to do before polling the watch again.
enum Next {
    Poll,
    Wait(Duration),
    GiveUp,
}

/// `stream` with [`DefaultBackoff`] after each error, a wait that a change
/// on `resume` (sent by the probe when it sees the server again) ends early.
pub(super) fn backoff<S, T, E>(
    stream: S,
    resume: watch::Receiver<()>,
) -> impl Stream<Item = Result<T, E>> + Send
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send,
    E: Send,
{
    let state = (
        Box::pin(stream),
        DefaultBackoff::default(),
        resume,
        Next::Poll,
    );
    futures::stream::unfold(
        state,
        |(mut stream, mut backoff, mut resume, next)| async move {
            match next {
                Next::Poll => {}
                Next::GiveUp => return None,
                Next::Wait(delay) => {
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        Ok(()) = resume.changed() => {
                            tracing::debug!(?delay, "the API server answers again: retrying the watch now");
                            backoff.reset();
                        }
                    }
                }
            }
            let item = stream.next().await?;
            let next = if item.is_ok() {
                backoff.reset();
                Next::Poll
            } else {
                // Only a recovery seen after this failure ends the wait.
                resume.borrow_and_update();
                backoff.next().map_or(Next::GiveUp, Next::Wait)
            };
            Some((item, (stream, backoff, resume, next)))
        },
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt as _;
    use tokio::sync::watch;

    /// A stream that fails `failures` times, then yields one item.
    fn failing(failures: usize) -> impl futures::Stream<Item = Result<u32, ()>> + Send {
        futures::stream::iter((0..failures).map(|_| Err(())).chain([Ok(7)]))
    }

    /// Paused time: the back-off after six failures is over 25 s (kube-rs's
    /// default starts at 800 ms and doubles); a resume signal ends it at once.
    #[tokio::test(start_paused = true)]
    async fn a_resume_signal_ends_the_backoff_at_once() {
        let (tx, rx) = watch::channel(());
        let mut stream = Box::pin(super::backoff(failing(6), rx));
        let start = tokio::time::Instant::now();
        for _ in 0..6 {
            assert_eq!(stream.next().await, Some(Err(())));
        }
        assert!(start.elapsed() > Duration::from_secs(12));
        let failed = tokio::time::Instant::now();
        let resumer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send_replace(());
            tx
        });
        assert_eq!(stream.next().await, Some(Ok(7)));
        assert_eq!(
            failed.elapsed(),
            Duration::from_secs(1),
            "resumed by the signal"
        );
        drop(resumer.await);
    }

    /// Without a signal the back-off runs its course.
    #[tokio::test(start_paused = true)]
    async fn without_a_signal_the_backoff_runs_its_course() {
        let (_tx, rx) = watch::channel(());
        let mut stream = Box::pin(super::backoff(failing(6), rx));
        for _ in 0..6 {
            assert_eq!(stream.next().await, Some(Err(())));
        }
        let failed = tokio::time::Instant::now();
        assert_eq!(stream.next().await, Some(Ok(7)));
        assert!(
            failed.elapsed() >= Duration::from_millis(25_600),
            "800 ms doubled five times, jitter only adds"
        );
    }
}
