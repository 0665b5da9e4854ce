//! One activation for every replica (docs/policy-authors.md, part 5). On PostgreSQL a
//! meter follows the shared ledger's activations: a thread waits for the notice an
//! activation's transaction sends (LISTEN/NOTIFY), or one second, whichever is first.
//! When the ledger's latest activation names a module other than the one this replica
//! runs, it reads the module's bytes from the ledger, compiles and checks them here, off
//! the sequencer, and has the sequencer switch between two decisions, recording nothing
//! (the activation is recorded already). A module it cannot load leaves it serving the
//! last good one, and it says so in its heartbeat row (`GET /v1/policy`) and in
//! `/metrics`. It writes that row every second.
//!
//! The shadow candidate is followed the same way: the ledger keeps its settings (each
//! set or clear through any replica, `shadows`), each replica runs the latest one, and
//! its heartbeat carries what its candidate disagreed on, which `Meter::shadow_report`
//! sums over the replicas.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::command::Command;
use super::{compile_gated, metrics};
use crate::clock::Clock;
use crate::error::MeterError;
use crate::model::ShadowReport;
use crate::policy::component::Limits;
use crate::policy::{PolicyDigest, PolicyInfo};
use crate::store::postgres::replicas::{self, ActivationListener, ReplicaBeat, ShadowSetting};

/// How often a replica looks for a new activation without a notice, and beats.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// How often the thread looks up from its wait: how soon a closing meter stops it.
const WAKE_EVERY: Duration = Duration::from_millis(100);

/// What the thread shares with its meter.
pub(super) struct Followed {
    pub url: String,
    pub replica: String,
    pub jobs: SyncSender<Command>,
    pub policy: Arc<RwLock<Arc<PolicyInfo>>>,
    /// The meter's activation lock: one activation at a time, local or followed.
    pub activation: Arc<Mutex<()>>,
    pub engine: wasmtime::Engine,
    pub limits: Limits,
    pub compile_cache_dir: Option<PathBuf>,
    pub clock: Arc<dyn Clock>,
    /// The shadow setting this replica runs (the `shadows` row's id; 0: none yet).
    pub shadow_setting: Arc<AtomicI64>,
}

/// The following thread; stopped (and joined) when the meter closes.
pub(super) struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    shadow: SharedShadow,
}

/// Where a replica records the shadow settings made through it, and which one it runs.
pub(super) struct SharedShadow {
    url: String,
    pub replica: String,
    setting: Arc<AtomicI64>,
}

impl SharedShadow {
    /// Records that the shadow is now `candidate` (none: cleared), which this replica
    /// runs already; the caller holds the activation lock, so the follower does not take
    /// up the setting again.
    pub fn record(
        &self,
        candidate: Option<(&PolicyDigest, &[u8])>,
        via: &str,
        now_ms: u64,
    ) -> Result<(), MeterError> {
        let now_ms = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let id = replicas::record_shadow(&self.url, candidate, via, now_ms)?;
        self.setting.store(id, Ordering::SeqCst);
        Ok(())
    }

    /// The setting this replica runs (none before the first).
    pub fn setting(&self) -> Option<i64> {
        Some(self.setting.load(Ordering::SeqCst)).filter(|id| *id != 0)
    }
}

impl Follower {
    pub fn start(followed: Followed) -> Result<Self, MeterError> {
        let stop = Arc::new(AtomicBool::new(false));
        let shadow = SharedShadow {
            url: followed.url.clone(),
            replica: followed.replica.clone(),
            setting: Arc::clone(&followed.shadow_setting),
        };
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("creditgate-follower".to_owned())
                .spawn(move || follow(&followed, &stop))
                .map_err(|error| {
                    MeterError::StoreUnavailable(format!("cannot start the follower: {error}"))
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            shadow,
        })
    }

    pub fn shadow(&self) -> &SharedShadow {
        &self.shadow
    }

    /// Stops the thread (within [`WAKE_EVERY`], or the compile in progress) and waits.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The latest activation this replica cannot load, and why.
type Behind = Option<(PolicyDigest, String)>;

fn follow(followed: &Followed, stop: &AtomicBool) {
    let mut listener: Option<ActivationListener> = None;
    let mut behind: Behind = None;
    let mut checked: Option<Instant> = None;
    let mut written: ShadowWritten = None;
    while !stop.load(Ordering::Relaxed) {
        let connected = match listener.as_mut() {
            Some(connected) => connected,
            None => match ActivationListener::open(&followed.url) {
                Ok(opened) => listener.insert(opened),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for activations; retrying");
                    std::thread::sleep(FOLLOW_EVERY);
                    continue;
                }
            },
        };
        let notified = match connected.wait(WAKE_EVERY) {
            Ok(notified) => notified,
            Err(error) => {
                tracing::warn!(%error, "the activation listener failed; reconnecting");
                listener = None;
                continue;
            }
        };
        if !notified && checked.is_some_and(|at| at.elapsed() < FOLLOW_EVERY) {
            continue;
        }
        checked = Some(Instant::now());
        if let Err(error) = catch_up(followed, connected, &mut behind)
            .and_then(|()| beat(followed, connected, &behind, &mut written))
        {
            tracing::warn!(%error, "cannot follow the ledger's activations; retrying");
            listener = None;
        }
    }
}

/// Takes up the ledger's latest activation and shadow setting, under the meter's
/// activation lock.
fn catch_up(
    followed: &Followed,
    listener: &mut ActivationListener,
    behind: &mut Behind,
) -> Result<(), MeterError> {
    let _one_at_a_time = followed
        .activation
        .lock()
        .map_err(|_| MeterError::ShutDown)?;
    follow_activation(followed, listener, behind)?;
    follow_shadow(followed, listener)
}

/// Takes up the ledger's latest activation, unless this replica runs it already or
/// failed to load it before.
fn follow_activation(
    followed: &Followed,
    listener: &mut ActivationListener,
    behind: &mut Behind,
) -> Result<(), MeterError> {
    let Some(latest) = listener.latest_activation()? else {
        return Ok(());
    };
    if latest == running(followed).digest {
        *behind = None;
        return Ok(());
    }
    if behind.as_ref().is_some_and(|(digest, _)| *digest == latest) {
        return Ok(());
    }
    let started = Instant::now();
    let adopted = listener
        .component(&latest)?
        .ok_or_else(|| MeterError::InvalidPolicy("the ledger keeps no component for it".to_owned()))
        .and_then(|component| {
            compile_gated(
                &followed.engine,
                &component,
                followed.limits,
                followed.compile_cache_dir.as_deref(),
            )
        })
        .and_then(|compiled| ask(followed, |reply| Command::Adopt { compiled, reply }));
    match adopted {
        Ok(info) => {
            tracing::info!(
                policy = %info.name,
                digest = %info.digest,
                ms = started.elapsed().as_millis(),
                "took up another replica's activation"
            );
            if let Ok(mut policy) = followed.policy.write() {
                *policy = Arc::new(info);
            }
            *behind = None;
        }
        Err(MeterError::ShutDown) => return Err(MeterError::ShutDown),
        Err(error) => {
            tracing::error!(digest = %latest, %error, "cannot load the ledger's active policy; serving the last good one");
            *behind = Some((latest, error.to_string()));
        }
    }
    metrics::policy_behind(behind.is_some());
    Ok(())
}

/// Takes up the ledger's latest shadow setting, unless this replica runs it already:
/// loads its candidate (compiled here, off the sequencer) or stops shadowing. A
/// candidate it cannot load leaves it without a shadow (one that disagrees with the
/// others' would be worse), and the error is logged.
fn follow_shadow(followed: &Followed, listener: &mut ActivationListener) -> Result<(), MeterError> {
    let Some(ShadowSetting { id, digest }) = listener.latest_shadow()? else {
        return Ok(());
    };
    if id == followed.shadow_setting.load(Ordering::SeqCst) {
        return Ok(());
    }
    let taken = match &digest {
        None => ask(followed, Command::TakeShadow).map(drop),
        Some(digest) => listener
            .shadow_component(id)?
            .ok_or_else(|| {
                MeterError::InvalidPolicy("the ledger keeps no component for it".to_owned())
            })
            .and_then(|component| {
                let compiled = compile_gated(
                    &followed.engine,
                    &component,
                    followed.limits,
                    followed.compile_cache_dir.as_deref(),
                )?;
                ask(followed, |reply| Command::SetShadow {
                    compiled,
                    component,
                    reply,
                })
            })
            .map(|report| {
                tracing::info!(shadow = %digest, policy = %report.shadow.name, "took up another replica's shadow");
            }),
    };
    match taken {
        Err(MeterError::ShutDown) => return Err(MeterError::ShutDown),
        Err(error) => {
            tracing::error!(setting = id, %error, "cannot take up the ledger's shadow; shadowing nothing");
            ask(followed, Command::TakeShadow)?;
        }
        Ok(()) => {}
    }
    followed.shadow_setting.store(id, Ordering::SeqCst);
    Ok(())
}

/// Asks the sequencer, and waits for its answer.
fn ask<T>(
    followed: &Followed,
    command: impl FnOnce(super::command::Reply<T>) -> Command,
) -> Result<T, MeterError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    followed
        .jobs
        .send(command(reply))
        .map_err(|_| MeterError::ShutDown)?;
    answer.blocking_recv().map_err(|_| MeterError::ShutDown)?
}

/// The shadow setting and report a replica's heartbeat row holds.
type ShadowWritten = Option<Option<(i64, ShadowReport)>>;

/// Writes the heartbeat, and the shadow report when it changed since it was last
/// written (a report of up to 10,000 tenants is not rewritten every second unchanged).
fn beat(
    followed: &Followed,
    listener: &mut ActivationListener,
    behind: &Behind,
    written: &mut ShadowWritten,
) -> Result<(), MeterError> {
    let running = running(followed);
    listener.beat(&ReplicaBeat {
        replica: &followed.replica,
        digest: &running.digest,
        behind: behind
            .as_ref()
            .map(|(digest, error)| (digest, error.as_str())),
        now_ms: i64::try_from(followed.clock.now_ms()).unwrap_or(i64::MAX),
    })?;
    let setting = followed.shadow_setting.load(Ordering::SeqCst);
    let shadow = ask(followed, Command::ShadowReport)?
        .filter(|_| setting != 0)
        .map(|report| (setting, report));
    if written.as_ref() != Some(&shadow) {
        *written = None;
        listener.beat_shadow(
            &followed.replica,
            shadow.as_ref().map(|(setting, report)| (*setting, report)),
        )?;
        *written = Some(shadow);
    }
    Ok(())
}

fn running(followed: &Followed) -> Arc<PolicyInfo> {
    match followed.policy.read() {
        Ok(policy) => Arc::clone(&policy),
        Err(poisoned) => Arc::clone(&poisoned.into_inner()),
    }
}
