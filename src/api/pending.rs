//! [`PendingLogits`]: logits on their way back from the GPU, as a future, a callback, a poll or
//! a blocking wait.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::Logits;
use crate::error::{Error, Result};

type Callback = Box<dyn FnOnce(Result<Logits>) + Send + 'static>;

enum State {
    Waiting {
        waker: Option<Waker>,
        callback: Option<Callback>,
    },
    Ready(Result<Logits>),
    Taken,
}

pub(super) struct Shared {
    state: Mutex<State>,
    /// Signalled when the state becomes `Ready`.
    arrived: std::sync::Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn complete(&self, result: Result<Logits>) {
        let mut st = self.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Waiting {
                callback: Some(f), ..
            } => {
                drop(st);
                f(result);
            }
            State::Waiting { waker, .. } => {
                *st = State::Ready(result);
                drop(st);
                self.arrived.notify_all();
                if let Some(w) = waker {
                    w.wake();
                }
            }
            other => *st = other,
        }
    }
}

/// Logits on their way back from the GPU: copied into a mappable buffer by the commands of a
/// forward, mapped with `map_async` once those commands are submitted.
///
/// Take them as a future (`.await`), with a callback ([`PendingLogits::on_ready`]), by polling
/// ([`PendingLogits::try_take`]), or by blocking ([`PendingLogits::wait`]). Nothing here
/// blocks except `wait`. As for any `map_async`, the mapping completes during a later
/// `Device::poll` or `Queue::submit` on the device; an application that submits every frame or
/// polls its device with `PollType::Poll` drives it.
///
/// ```no_run
/// # async fn frame(engine: &sret_tome::Engine, frame: &wgpu::Texture) -> sret_tome::Result<()> {
/// let mut encoder = engine.device().create_command_encoder(&Default::default());
/// engine.encode_forward(&mut encoder, frame)?;
/// let pending = engine.encode_readback(&mut encoder);
/// engine.queue().submit([encoder.finish()]);
/// // The event loop keeps polling the device (`device.poll(wgpu::PollType::Poll)`) meanwhile.
/// let logits = pending.await?;
/// println!("class {}", logits.argmax(0));
///
/// // Or with a callback, run by the thread that polls:
/// let pending = engine.forward_async(frame)?;
/// pending.on_ready(|logits| {
///     if let Ok(logits) = logits {
///         println!("class {}", logits.argmax(0));
///     }
/// });
/// # Ok(())
/// # }
/// ```
pub struct PendingLogits {
    shared: Arc<Shared>,
    device: wgpu::Device,
}

impl fmt::Debug for PendingLogits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingLogits")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl PendingLogits {
    /// Logits not arrived yet, and the handle the mapping callback completes them through.
    pub(super) fn waiting(device: &wgpu::Device) -> (PendingLogits, Arc<Shared>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Waiting {
                waker: None,
                callback: None,
            }),
            arrived: std::sync::Condvar::new(),
        });
        let pending = PendingLogits {
            shared: shared.clone(),
            device: device.clone(),
        };
        (pending, shared)
    }

    /// Whether the logits have arrived (and were not taken yet).
    pub fn is_ready(&self) -> bool {
        matches!(*self.shared.lock(), State::Ready(_))
    }

    /// The logits if they have arrived, without waiting (each result is returned once).
    pub fn try_take(&mut self) -> Option<Result<Logits>> {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Ready(r) => Some(r),
            other => {
                *st = other;
                None
            }
        }
    }

    /// Call `f` with the logits when they arrive: on the thread whose `Device::poll` or
    /// `Queue::submit` completes the mapping (keep it short), or right now if they already have.
    pub fn on_ready(self, f: impl FnOnce(Result<Logits>) + Send + 'static) {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Ready(r) => {
                drop(st);
                f(r);
            }
            State::Waiting { waker, .. } => {
                *st = State::Waiting {
                    waker,
                    callback: Some(Box::new(f)),
                }
            }
            State::Taken => {
                drop(st);
                f(Err(taken()));
            }
        }
    }

    /// Block until the logits arrive, polling the device. Returns an error if the commands that
    /// copy them were never submitted.
    pub fn wait(mut self) -> Result<Logits> {
        // Another thread's poll may have collected the mapping callback and be running it just
        // as our own poll returns; the queue being idle is then not yet the logits being here.
        const GRACE: Duration = Duration::from_secs(2);
        let start = std::time::Instant::now();
        loop {
            if let Some(r) = self.try_take() {
                return r;
            }
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Gpu {
                    during: "waiting for the logits".into(),
                    why: e.to_string(),
                })?;
            let st = self.shared.lock();
            drop(
                self.shared
                    .arrived
                    .wait_timeout_while(st, Duration::from_millis(20), |s| {
                        matches!(s, State::Waiting { .. })
                    })
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if let Some(r) = self.try_take() {
                return r;
            }
            if start.elapsed() > GRACE {
                return Err(Error::Gpu {
                    during: "waiting for the logits".into(),
                    why: "the device is idle and the logits never arrived: submit the encoder the readback was recorded in first".into(),
                });
            }
        }
    }
}

fn taken() -> Error {
    Error::Gpu {
        during: "readback".into(),
        why: "these logits were already taken".into(),
    }
}

impl Future for PendingLogits {
    type Output = Result<Logits>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.lock();
        match std::mem::replace(&mut *st, State::Taken) {
            State::Ready(r) => Poll::Ready(r),
            State::Waiting { callback, .. } => {
                *st = State::Waiting {
                    waker: Some(cx.waker().clone()),
                    callback,
                };
                Poll::Pending
            }
            State::Taken => Poll::Ready(Err(taken())),
        }
    }
}
