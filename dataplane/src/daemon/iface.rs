//! The node's two interfaces as the daemon finds them, and how many
//! workers serve them.

use core_affinity::CoreId;
use tandem_common::MAX_QUEUES;
use tandem_control::config::Config;

use super::DaemonError;
use crate::sys;

/// The inside and outside interfaces (slots 0 and 1), their rx queues,
/// and the workers that will serve them.
#[derive(Clone, Debug)]
pub(super) struct Interfaces {
    pub names: Vec<String>,
    pub indexes: Vec<u32>,
    /// Rx queues served per interface (at most [`MAX_QUEUES`]).
    pub queues: Vec<u32>,
    pub workers: u32,
    /// The cores workers are pinned to, in turn.
    pub cores: Vec<CoreId>,
}

impl Interfaces {
    /// Finds the configured interfaces and their queues, and decides the
    /// worker count (configured, or one per queue up to one per core);
    /// every worker needs a queue on each interface.
    pub fn resolve(cfg: &Config) -> Result<Self, DaemonError> {
        let names = vec![
            cfg.interfaces.inside.clone(),
            cfg.interfaces.outside.clone(),
        ];
        let mut indexes = Vec::new();
        let mut queues = Vec::new();
        for name in &names {
            let idx = sys::if_index(name).map_err(|source| DaemonError::Interface {
                name: name.clone(),
                source,
            })?;
            indexes.push(idx);
            let q = sys::rx_queue_count(name);
            if q > MAX_QUEUES {
                tracing::warn!(
                    iface = %name,
                    queues = q,
                    served = MAX_QUEUES,
                    "more rx queues than the XDP program steers for; frames on the others are \
                     dropped and counted as xdp drop_no_socket (reduce with `ethtool -L`)"
                );
            }
            queues.push(q.min(MAX_QUEUES));
        }
        let all = core_affinity::get_core_ids().unwrap_or_default();
        let cores = if cfg.dataplane.cores.is_empty() {
            all
        } else {
            cfg.dataplane
                .cores
                .iter()
                .map(|&c| {
                    all.iter()
                        .find(|id| id.id == c as usize)
                        .copied()
                        .ok_or_else(|| DaemonError::NoSuchCore {
                            cpu: c,
                            allowed: all.iter().map(|id| id.id).collect(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let min_queues = queues.iter().copied().min().unwrap_or(1);
        let workers = match cfg.dataplane.workers {
            0 => min_queues.min(cores.len().max(1) as u32),
            n => n,
        };
        for (name, q) in names.iter().zip(&queues) {
            if workers > *q {
                return Err(DaemonError::TooFewQueues {
                    workers,
                    iface: name.clone(),
                    queues: *q,
                });
            }
        }
        Ok(Self {
            names,
            indexes,
            queues,
            workers,
            cores,
        })
    }

    /// The worker count, as an index bound.
    pub fn worker_count(&self) -> usize {
        self.workers as usize
    }
}
