//! The pixels a running relay delivers to, which the admin API may add, change, disable and remove while the relay
//! runs. A pixel's setup (its configuration, compiled plan and mapping text) is swapped whole: the writer takes the
//! setups once per group of requests, so events in flight finish under the plan they started with, and delivery
//! reads the setup again for every request it sends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::Notify;

use super::config::Integration;
use crate::plan::Plan;

/// One pixel the relay delivers to. Its name never changes: the queue, dead letters, identity memory and metrics
/// are kept under it.
pub(super) struct Pixel {
    pub name: String,
    setup: RwLock<Arc<Setup>>,
    /// Wakes the pixel's delivery task when events are queued, its setup changed or it was removed.
    pub queued: Notify,
    /// Paused on an authentication error; delivery resumes by itself when the key works again.
    pub paused: AtomicBool,
    /// What the pixel's delivery last saw, for the console.
    pub status: Mutex<Status>,
    removed: AtomicBool,
}

/// What a pixel delivers with; replaced whole when the admin API changes it.
pub(super) struct Setup {
    pub config: Integration,
    pub plan: Arc<Plan>,
    pub mapping: MappingText,
    /// Version 0 of the mapping's history: what relay.yaml names, or the embedded preset.
    pub base: MappingText,
    /// For a pixel of relay.yaml: the fingerprint of its section there, under which console edits are kept.
    pub fingerprint: Option<String>,
    /// Takes no new events and sends nothing; what is queued stays queued until it is enabled again.
    pub disabled: bool,
    /// Where the setup comes from: `file` (relay.yaml, perhaps edited in the console) or `console`.
    pub origin: Origin,
}

/// The text of the mapping a plan was compiled from, and its version in the pixel's history.
#[derive(Clone)]
pub(super) struct MappingText {
    /// The name diagnostics show: the file, the preset's path, or `console:<pixel>`.
    pub name: String,
    pub source: Arc<str>,
    /// 0 for the mapping relay.yaml names (or the embedded preset); 1, 2, … for versions saved in the console.
    pub version: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Origin {
    File,
    Console,
}

/// The latest delivery attempt and why the pixel is paused, if it is.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(super) struct Status {
    pub last_delivery: Option<LastDelivery>,
    pub paused_why: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct LastDelivery {
    pub at_ms: i64,
    /// HTTP status; `None` when no answer came.
    pub status: Option<u16>,
    /// OpenAI's answer (cut), or what went wrong.
    pub response: String,
    pub events: usize,
}

impl Pixel {
    pub fn new(setup: Setup) -> Pixel {
        Pixel {
            name: setup.config.name.clone(),
            setup: RwLock::new(Arc::new(setup)),
            queued: Notify::new(),
            paused: AtomicBool::new(false),
            status: Mutex::new(Status::default()),
            removed: AtomicBool::new(false),
        }
    }

    /// The current setup; holding it keeps its plan alive however often it is replaced meanwhile.
    pub fn setup(&self) -> Arc<Setup> {
        self.setup.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the setup and wakes delivery, which sends with it from its next request.
    pub fn replace(&self, setup: Setup) {
        *self.setup.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(setup);
        self.queued.notify_one();
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub fn status(&self) -> Status {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn record_delivery(&self, delivery: LastDelivery) {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).last_delivery = Some(delivery);
    }

    pub fn set_paused(&self, why: Option<String>) -> bool {
        let was = self.paused.swap(why.is_some(), Ordering::Relaxed);
        self.status.lock().unwrap_or_else(PoisonError::into_inner).paused_why = why;
        was
    }
}

/// Every pixel, in the order they were configured and then added.
#[derive(Default)]
pub(super) struct Registry {
    pixels: RwLock<Vec<Arc<Pixel>>>,
}

impl Registry {
    pub fn new(pixels: Vec<Pixel>) -> Registry {
        Registry { pixels: RwLock::new(pixels.into_iter().map(Arc::new).collect()) }
    }

    pub fn all(&self) -> Vec<Arc<Pixel>> {
        self.pixels.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The pixels taking events, each with the setup to map them under.
    pub fn active(&self) -> Vec<(Arc<Pixel>, Arc<Setup>)> {
        let pixels = self.pixels.read().unwrap_or_else(PoisonError::into_inner);
        pixels.iter().map(|p| (p.clone(), p.setup())).filter(|(_, setup)| !setup.disabled).collect()
    }

    pub fn find(&self, name: &str) -> Option<Arc<Pixel>> {
        self.pixels.read().unwrap_or_else(PoisonError::into_inner).iter().find(|p| p.name == name).cloned()
    }

    /// Adds a pixel; `None` when the name is taken.
    pub fn add(&self, pixel: Pixel) -> Option<Arc<Pixel>> {
        let mut pixels = self.pixels.write().unwrap_or_else(PoisonError::into_inner);
        if pixels.iter().any(|p| p.name == pixel.name) {
            return None;
        }
        let pixel = Arc::new(pixel);
        pixels.push(pixel.clone());
        Some(pixel)
    }

    /// Removes a pixel and ends its delivery task.
    pub fn remove(&self, name: &str) -> Option<Arc<Pixel>> {
        let mut pixels = self.pixels.write().unwrap_or_else(PoisonError::into_inner);
        let index = pixels.iter().position(|p| p.name == name)?;
        let pixel = pixels.remove(index);
        pixel.removed.store(true, Ordering::Release);
        pixel.queued.notify_one();
        Some(pixel)
    }
}
