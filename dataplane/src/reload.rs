//! Live reload: SIGHUP, `systemctl reload` and `tandemctl reload` read the
//! configuration file again and apply what may change while running.
//!
//! Design: the [`Reloader`] checks the new file (it must parse, validate
//! and change no key that only a restart changes, see
//! [`Config::changes`]), then publishes it in [`Live`] under a new
//! generation. Each worker, once per loop, and the redundancy thread,
//! once per turn, compare one atomic with the generation they applied;
//! when it moved they take the configuration and apply it between
//! packets. The reload waits for all of them, so its answer says what
//! runs. A refused or broken file changes nothing.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tandem_control::config::Config;

/// How long a reload waits for the workers and the redundancy thread.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// The running configuration and who has applied which generation of it.
pub struct Live {
    generation: AtomicU64,
    config: Mutex<Arc<Config>>,
    /// Per worker, then the redundancy thread: the generation it runs.
    applied: Vec<AtomicU64>,
}

impl Live {
    /// Generation 0 of `cfg`, for `workers` workers and, when `ha`, a
    /// redundancy thread.
    pub fn new(cfg: &Config, workers: usize, ha: bool) -> Self {
        let applied = (0..=workers)
            .map(|i| AtomicU64::new(if i == workers && !ha { u64::MAX } else { 0 }))
            .collect();
        Self {
            generation: AtomicU64::new(0),
            config: Mutex::new(Arc::new(cfg.clone())),
            applied,
        }
    }

    /// The newest generation: one relaxed load, cheap enough for every
    /// loop of a worker.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The running configuration.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Worker `who` (or, past the workers, the redundancy thread) runs
    /// generation `generation`.
    pub fn applied(&self, who: usize, generation: u64) {
        self.applied[who].store(generation, Ordering::Release);
    }

    /// The redundancy thread's index for [`Self::applied`].
    pub fn ha_index(&self) -> usize {
        self.applied.len() - 1
    }

    fn publish(&self, cfg: Config) -> u64 {
        let mut c = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        *c = Arc::new(cfg);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Those that have not applied `generation` within `wait`: worker
    /// numbers, and `None` for the redundancy thread.
    fn wait_applied(&self, generation: u64, wait: Duration) -> Vec<Option<usize>> {
        let until = Instant::now() + wait;
        loop {
            let late: Vec<Option<usize>> = self
                .applied
                .iter()
                .enumerate()
                .filter(|(_, a)| {
                    let a = a.load(Ordering::Acquire);
                    a != u64::MAX && a < generation
                })
                .map(|(i, _)| (i < self.ha_index()).then_some(i))
                .collect();
            if late.is_empty() || Instant::now() >= until {
                return late;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Sets tandemd's log filter (`log.level`); `Err` says why it did not.
pub type SetLog = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Reads the file again and applies it: one reload at a time, from the
/// main thread (SIGHUP) or the control thread (`tandemctl reload`).
pub struct Reloader {
    live: Arc<Live>,
    path: OnceLock<PathBuf>,
    set_log: OnceLock<SetLog>,
    one: Mutex<()>,
}

impl Reloader {
    pub fn new(live: Arc<Live>) -> Self {
        Self {
            live,
            path: OnceLock::new(),
            set_log: OnceLock::new(),
            one: Mutex::new(()),
        }
    }

    /// Where the configuration is read from again, and how the log
    /// filter is set; without a path a reload is refused.
    pub fn configure(&self, path: PathBuf, set_log: Option<SetLog>) {
        let _ = self.path.set(path);
        if let Some(s) = set_log {
            let _ = self.set_log.set(s);
        }
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Reads the file, and applies it if only live keys changed. `Ok`
    /// says what changed; `Err` why nothing did (or, for a worker that
    /// did not take the change in time, that it is late).
    pub fn reload(&self) -> Result<String, String> {
        let _one = self.one.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(path) = self.path.get() else {
            return Err("no configuration file to read again".into());
        };
        // The answer is one line (the control protocol's).
        let new = Config::load(path).map_err(|e| {
            let why = tandem_control::error_chain(&e);
            let why: Vec<&str> = why
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            format!("{}; the running configuration stays", why.join(" | "))
        })?;
        let running = self.live.config();
        let ch = running.changes(&new);
        if !ch.fixed.is_empty() {
            return Err(format!(
                "{}: {} cannot change while tandemd runs (restart it to change {}); \
                 the running configuration stays",
                path.display(),
                ch.fixed.join(", "),
                if ch.fixed.len() == 1 { "it" } else { "them" },
            ));
        }
        if ch.live.is_empty() {
            return Ok("no change".into());
        }
        if ch.live.iter().any(|k| k == "log.level")
            && let Some(set) = self.set_log.get()
        {
            set(&new.log.level).map_err(|e| {
                format!(
                    "log.level {:?}: {e}; the running configuration stays",
                    new.log.level
                )
            })?;
        }
        let generation = self.live.publish(new);
        let late = self.live.wait_applied(generation, APPLY_WAIT);
        let changed = ch.live.join(", ");
        if late.is_empty() {
            tracing::debug!("every worker runs configuration generation {generation}");
            tracing::info!(generation, changed = %changed, "configuration reloaded");
            return Ok(format!("reloaded: {changed}"));
        }
        let late: Vec<String> = late
            .iter()
            .map(|l| {
                l.map_or_else(
                    || "the redundancy thread".to_owned(),
                    |w| format!("worker {w}"),
                )
            })
            .collect();
        tracing::warn!(generation, changed = %changed, late = ?late, "configuration published, not yet applied");
        Err(format!(
            "reloaded ({changed}), but {} did not apply it within {} s; it will when it runs again",
            late.join(", "),
            APPLY_WAIT.as_secs()
        ))
    }
}
