//! The reaper: runs barriers ([`Barrier::wait`], an RCU grace period) on
//! its own thread, so that no update waits for one (steps 4 and 5 of the
//! update protocol, see `super::dataplane`).

use std::{
    sync::{Arc, Condvar, Mutex, mpsc},
    thread::JoinHandle,
};

use super::{Error, maps::Barrier};

/// Runs barriers on its own thread; requests that queue up while a barrier
/// runs are served by the next one.
pub(super) struct Reaper {
    requests: Option<mpsc::Sender<u64>>,
    state: Arc<(Mutex<ReaperState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct ReaperState {
    /// The highest generation whose barrier has completed.
    done: u64,
    /// The last barrier failed (the kernel refused the map update).
    failed: Option<String>,
}

impl Reaper {
    pub(super) fn start(mut barrier: Barrier) -> Self {
        let (requests, queue) = mpsc::channel::<u64>();
        let state: Arc<(Mutex<ReaperState>, Condvar)> = Arc::default();
        let shared = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("lb-reaper".to_owned())
            .spawn(move || {
                while let Ok(mut generation) = queue.recv() {
                    while let Ok(later) = queue.try_recv() {
                        generation = generation.max(later);
                    }
                    let outcome = barrier.wait();
                    let (lock, cv) = &*shared;
                    let Ok(mut s) = lock.lock() else { return };
                    match outcome {
                        Ok(()) => {
                            s.done = s.done.max(generation);
                            s.failed = None;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "barrier failed: retired backend slots are not recycled");
                            s.failed = Some(e.to_string());
                        }
                    }
                    cv.notify_all();
                }
            })
            .ok();
        Self {
            requests: Some(requests),
            state,
            thread,
        }
    }

    /// Asks for barrier `generation` (and every one before it).
    pub(super) fn request(&self, generation: u64) {
        if let Some(r) = &self.requests {
            let _ = r.send(generation);
        }
    }

    /// The highest generation whose barrier has completed.
    pub(super) fn done(&self) -> u64 {
        self.state.0.lock().map_or(0, |s| s.done)
    }

    /// Blocks until barrier `generation` has completed.
    pub(super) fn wait_for(&self, generation: u64) -> Result<(), Error> {
        let (lock, cv) = &*self.state;
        let mut s = lock
            .lock()
            .map_err(|_| Error::Reaper("lock poisoned".to_owned()))?;
        while s.done < generation {
            if let Some(e) = s.failed.take() {
                return Err(Error::Reaper(e));
            }
            s = cv
                .wait(s)
                .map_err(|_| Error::Reaper("lock poisoned".to_owned()))?;
        }
        Ok(())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.requests = None; // ends the thread's loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
