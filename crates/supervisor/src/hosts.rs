//! The hosts of a multi-host job and what happened to them (SCR-style spares).
//!
//! Policy (decisions):
//! - The last `--spares K` hosts of the list start as spares; the others are active and
//!   get the ranks (`lazarus_net::launch::place`: slots, else an even share).
//! - A process that died on a live host restarts on the same hosts: its host is healthy
//!   (it answered). Only a *lost host* (its ranks silent and the host not answering on the
//!   network, see `lazarus_net::launch`) changes the placement.
//! - A lost host is left out of the next launch: a healthy spare takes its place (its
//!   ranks, in the same position), else, with `--shrink-on-failure`, the job restarts on
//!   fewer ranks (those of the lost host) when the checkpoint can be redistributed, else
//!   the remaining hosts take its ranks (oversubscribed, said loudly).
//! - A host that failed once may come back: it becomes the last spare (after the healthy
//!   ones). A host that failed twice is excluded for the rest of the job.

use lazarus_net::launch::{place, HostSpec};

/// Where a host stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostState {
    /// Runs ranks.
    Active,
    /// Waits to replace a lost host.
    Spare,
    /// Failed once; the last spare.
    Suspect,
    /// Failed twice: never used again in this job.
    Excluded,
}

#[derive(Clone, Debug)]
struct PoolHost {
    spec: HostSpec,
    state: HostState,
    failures: u32,
    used: bool,
}

/// What a lost host changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// This spare took the lost host's place.
    Spare(String),
    /// No spare left: the active hosts shrank by one.
    None,
}

/// The hosts of a job.
#[derive(Clone, Debug)]
pub struct HostPool {
    hosts: Vec<PoolHost>,
    /// Active hosts in placement order (indexes into `hosts`).
    order: Vec<usize>,
}

/// Which hosts a job used, lost and excluded (for the report).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostsReport {
    /// Every host that ran ranks at some point, in list order.
    pub used: Vec<String>,
    /// Hosts lost at least once, with how many times.
    pub failed: Vec<(String, u32)>,
    /// Hosts excluded for the rest of the job (failed twice).
    pub excluded: Vec<String>,
    /// Spares never used.
    pub spares_left: Vec<String>,
}

impl HostPool {
    /// `hosts` in order, the last `spares` of them spare. Errors name the problem.
    pub fn new(hosts: Vec<HostSpec>, spares: u32) -> Result<HostPool, String> {
        if hosts.is_empty() {
            return Err("the host list is empty".into());
        }
        if spares as usize >= hosts.len() {
            return Err(format!(
                "--spares {spares} leaves no host to run on ({} host(s) given)",
                hosts.len()
            ));
        }
        let active = hosts.len() - spares as usize;
        Ok(HostPool {
            order: (0..active).collect(),
            hosts: hosts
                .into_iter()
                .enumerate()
                .map(|(i, spec)| PoolHost {
                    spec,
                    state: if i < active {
                        HostState::Active
                    } else {
                        HostState::Spare
                    },
                    failures: 0,
                    used: false,
                })
                .collect(),
        })
    }

    /// The host of each of `ranks` ranks on the active hosts; marks them used.
    pub fn placement(&mut self, ranks: u32) -> Result<Vec<String>, String> {
        let specs: Vec<HostSpec> = self
            .order
            .iter()
            .map(|&i| self.hosts[i].spec.clone())
            .collect();
        let p = place(&specs, ranks).map_err(|e| e.to_string())?;
        for &i in &self.order {
            if p.contains(&self.hosts[i].spec.name) {
                self.hosts[i].used = true;
            }
        }
        Ok(p)
    }

    /// Ranks the active hosts hold by their slots (`None` if some host has no slot count).
    pub fn slots(&self) -> Option<u32> {
        self.order.iter().map(|&i| self.hosts[i].spec.slots).sum()
    }

    /// Number of active hosts.
    pub fn active(&self) -> usize {
        self.order.len()
    }

    /// The state of `host`, if it is in the pool.
    pub fn state(&self, host: &str) -> Option<HostState> {
        self.find(host).map(|i| self.hosts[i].state)
    }

    /// The pool's name for `host` as a rank reported it (see `find`).
    pub(crate) fn canonical(&self, host: &str) -> Option<&str> {
        self.find(host).map(|i| self.hosts[i].spec.name.as_str())
    }

    /// The pool's entry for `host` as a rank reported it: the exact name, else the one
    /// entry with the same short name. Slurm's ranks report `SLURMD_NODENAME` (`node3`)
    /// while `--hosts` may spell the node fully qualified (`node3.cluster.example`):
    /// without this the lost host was not found and no spare replaced it, silently.
    fn find(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.hosts.iter().position(|h| h.spec.name == host) {
            return Some(i);
        }
        let short = |n: &str| -> Option<String> {
            if n.parse::<std::net::IpAddr>().is_ok() {
                return None;
            }
            n.split('.').next().map(str::to_ascii_lowercase)
        };
        let want = short(host)?;
        let mut same = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| short(&h.spec.name).as_deref() == Some(want.as_str()));
        match (same.next(), same.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// `host` is gone: it leaves the active hosts (suspect after one failure, excluded
    /// after two) and the next spare takes its place; a suspect host is the last resort,
    /// but never one of `lost_now`, the hosts lost in the same failure (found in review:
    /// of two hosts lost together, the second was replaced by the first, dead one).
    /// Unknown or inactive hosts change nothing (`None`).
    pub fn host_lost(&mut self, host: &str, lost_now: &[String]) -> Option<Replacement> {
        let lost_now: Vec<usize> = lost_now.iter().filter_map(|h| self.find(h)).collect();
        let i = self.find(host)?;
        let pos = self.order.iter().position(|&x| x == i)?;
        let h = &mut self.hosts[i];
        h.failures += 1;
        h.state = if h.failures >= 2 {
            HostState::Excluded
        } else {
            HostState::Suspect
        };
        let spare = self
            .hosts
            .iter()
            .position(|h| h.state == HostState::Spare)
            .or_else(|| {
                self.hosts.iter().enumerate().position(|(k, h)| {
                    k != i && h.state == HostState::Suspect && !lost_now.contains(&k)
                })
            });
        match spare {
            Some(s) => {
                self.hosts[s].state = HostState::Active;
                self.order[pos] = s;
                Some(Replacement::Spare(self.hosts[s].spec.name.clone()))
            }
            None => {
                self.order.remove(pos);
                Some(Replacement::None)
            }
        }
    }

    /// What the job used, lost and excluded.
    pub fn report(&self) -> HostsReport {
        let names = |f: &dyn Fn(&PoolHost) -> bool| {
            self.hosts
                .iter()
                .filter(|h| f(h))
                .map(|h| h.spec.name.clone())
                .collect::<Vec<_>>()
        };
        HostsReport {
            used: names(&|h| h.used),
            failed: self
                .hosts
                .iter()
                .filter(|h| h.failures > 0)
                .map(|h| (h.spec.name.clone(), h.failures))
                .collect(),
            excluded: names(&|h| h.state == HostState::Excluded),
            spares_left: names(&|h| h.state == HostState::Spare),
        }
    }
}

impl std::fmt::Display for HostsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hosts used: {}", self.used.join(", "))?;
        if !self.failed.is_empty() {
            let failed: Vec<String> = self
                .failed
                .iter()
                .map(|(h, n)| format!("{h} ({n}x)"))
                .collect();
            write!(f, "; lost: {}", failed.join(", "))?;
        }
        if !self.excluded.is_empty() {
            write!(f, "; excluded: {}", self.excluded.join(", "))?;
        }
        if !self.spares_left.is_empty() {
            write!(f, "; spares left: {}", self.spares_left.join(", "))?;
        }
        Ok(())
    }
}

/// The pool of a supervised job: `None` for a local engine (one machine, no hosts).
pub(crate) fn pool_for(
    cfg: &crate::SupervisorConfig,
) -> Result<Option<HostPool>, crate::SupervisorError> {
    let engine = &cfg.launch.engine;
    let bad = |m: String| crate::SupervisorError::Config(m);
    if !engine.remote() {
        if !cfg.hosts.is_empty() || cfg.spares > 0 {
            return Err(bad(format!(
                "the {} engine runs every rank on this machine: hosts and spares need \
                 --launcher mpirun, srun or ssh",
                engine.name()
            )));
        }
        return Ok(None);
    }
    let hosts = if cfg.hosts.is_empty() {
        engine
            .default_hosts()
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .map(|name| HostSpec { name, slots: None })
            .collect()
    } else {
        cfg.hosts.clone()
    };
    if hosts.is_empty() {
        return Err(bad(format!(
            "the {} engine needs hosts (--hosts or --hostfile)",
            engine.name()
        )));
    }
    HostPool::new(hosts, cfg.spares).map(Some).map_err(bad)
}

/// The supervisor's planned kills as kills the remote ranks' shims carry out.
pub(crate) fn inject(
    kills: &[crate::plan::ResolvedKill],
) -> Vec<(u32, lazarus_net::launch::InjectAt)> {
    use crate::plan::KillTrigger;
    use lazarus_net::launch::InjectAt;
    kills
        .iter()
        .map(|k| {
            let at = match k.trigger {
                KillTrigger::AfterStart(d) => InjectAt::AfterStart(d),
                // The rank's own part marker of the k-th checkpoint precedes its commit:
                // the same point of the run, seen from the rank's host.
                KillTrigger::AfterCommits { commits, delay } => InjectAt::AfterParts {
                    parts: commits,
                    delay,
                },
            };
            (k.rank, at)
        })
        .collect()
}

/// After a failed launch with per-rank hosts `placement`: every lost host leaves the pool
/// (replaced by a spare if one is left). Returns how many ranks lost their host without a
/// replacement (what a shrink would remove).
pub(crate) fn after_failure(
    pool: &mut HostPool,
    outcome: &lazarus_net::launch::JobOutcome,
    placement: &[String],
    progress: bool,
) -> u32 {
    let mut unplaced = 0;
    let mut distinct: Vec<&String> = placement.iter().collect();
    distinct.dedup();
    // The ranks name their hosts as their node calls itself (Slurm's `SLURMD_NODENAME`),
    // the placement as `--hosts` spells them: compare in the pool's names.
    let lost: Vec<String> = outcome
        .lost_hosts
        .iter()
        .map(|h| pool.canonical(h).unwrap_or(h).to_string())
        .collect();
    if !distinct.is_empty() && distinct.iter().all(|h| lost.contains(h)) {
        // Every host at once: the head node's own network is the likelier culprit; blaming
        // (and excluding) every host would end the job for nothing.
        if progress {
            crate::supervisor::progress(format_args!(
                "lazarus: no host answered ({}): not counting it against the hosts (is the \
                 head node's network down?)",
                outcome.lost_hosts.join(", ")
            ));
        }
        return 0;
    }
    for h in &lost {
        let ranks: Vec<usize> = placement
            .iter()
            .enumerate()
            .filter(|(_, x)| *x == h)
            .map(|(r, _)| r)
            .collect();
        let Some(change) = pool.host_lost(h, &lost) else {
            continue;
        };
        let excluded = pool.state(h) == Some(HostState::Excluded);
        if change == Replacement::None {
            unplaced += ranks.len() as u32;
        }
        if progress {
            let then = match &change {
                Replacement::Spare(s) => format!("its ranks restart on spare host {s}"),
                Replacement::None => format!(
                    "no spare host left: {} host(s) remain for its ranks (fewer ranks with \
                     --shrink-on-failure)",
                    pool.active()
                ),
            };
            crate::supervisor::progress(format_args!(
                "lazarus: host {h} is gone (ranks {ranks:?} lost){}; {then}",
                if excluded {
                    ", excluded for the rest of the job (it failed twice)"
                } else {
                    ""
                }
            ));
        }
    }
    unplaced
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_net::launch::parse_hosts;

    /// A failed launch that lost `lost` (as the ranks named their hosts).
    fn outcome(lost: &[&str]) -> lazarus_net::launch::JobOutcome {
        lazarus_net::launch::JobOutcome {
            failure: None,
            interrupted: None,
            statuses: Vec::new(),
            elapsed: std::time::Duration::ZERO,
            hosts: Vec::new(),
            lost_hosts: lost.iter().map(|h| h.to_string()).collect(),
            failed_at: None,
        }
    }

    #[test]
    fn a_lost_host_is_replaced_by_a_spare_in_its_position() {
        let mut p = HostPool::new(parse_hosts("a,b,c,d,e").unwrap(), 1).unwrap();
        assert_eq!(
            p.placement(8).unwrap(),
            ["a", "a", "b", "b", "c", "c", "d", "d"]
        );
        assert_eq!(p.host_lost("b", &[]), Some(Replacement::Spare("e".into())));
        assert_eq!(
            p.placement(8).unwrap(),
            ["a", "a", "e", "e", "c", "c", "d", "d"]
        );
        assert_eq!(p.state("b"), Some(HostState::Suspect));
        // No healthy spare left: the suspect host is the last resort.
        assert_eq!(p.host_lost("c", &[]), Some(Replacement::Spare("b".into())));
        assert_eq!(
            p.placement(8).unwrap(),
            ["a", "a", "e", "e", "b", "b", "d", "d"]
        );
        // Failing twice excludes it; the other suspect host replaces it.
        assert_eq!(p.host_lost("b", &[]), Some(Replacement::Spare("c".into())));
        assert_eq!(p.state("b"), Some(HostState::Excluded));
        // Nothing left to replace a host: the job runs on fewer hosts.
        assert_eq!(p.host_lost("c", &[]), Some(Replacement::None));
        assert_eq!(p.active(), 3);
        assert_eq!(p.placement(6).unwrap(), ["a", "a", "e", "e", "d", "d"]);
        let r = p.report();
        assert_eq!(r.used, ["a", "b", "c", "d", "e"]);
        assert_eq!(r.excluded, ["b", "c"]);
        assert_eq!(r.failed, [("b".into(), 2), ("c".into(), 2)]);
        assert_eq!(p.host_lost("zz", &[]), None);
        assert_eq!(
            p.host_lost("b", &[]),
            None,
            "an excluded host is not active"
        );
    }

    /// Found in review: with no spare, the first of two hosts lost in one failure became
    /// suspect and then replaced the second: the next launch placed ranks on a dead host.
    #[test]
    fn two_hosts_lost_at_once_do_not_replace_each_other() {
        let mut p = HostPool::new(parse_hosts("a,b,c").unwrap(), 0).unwrap();
        let lost = vec!["a".to_string(), "b".to_string()];
        assert_eq!(p.host_lost("a", &lost), Some(Replacement::None));
        assert_eq!(p.host_lost("b", &lost), Some(Replacement::None));
        assert_eq!(p.placement(1).unwrap(), ["c"]);
        assert_eq!(p.active(), 1);
        // A later failure may still fall back on a suspect host.
        assert_eq!(p.host_lost("c", &[]), Some(Replacement::Spare("a".into())));
    }

    /// Regression (review): Slurm's ranks name their node by `SLURMD_NODENAME` (`n2`); a
    /// `--hosts` list of fully qualified names did not find the lost host, and no spare
    /// replaced it. A unique short name now matches; an ambiguous one or an IP does not.
    #[test]
    fn a_lost_host_reported_by_its_short_name_is_found() {
        let mut p = HostPool::new(
            parse_hosts("n1.c.example,n2.c.example,n3.c.example").unwrap(),
            1,
        )
        .unwrap();
        assert_eq!(
            p.host_lost("n2", &[]),
            Some(Replacement::Spare("n3.c.example".into()))
        );
        assert_eq!(p.state("n2.c.example"), Some(HostState::Suspect));
        // The same through a failed launch: the placement spells the hosts as --hosts,
        // the outcome as the ranks' nodes call themselves.
        let mut p = HostPool::new(parse_hosts("n1.c,n2.c").unwrap(), 0).unwrap();
        let placement = p.placement(4).unwrap();
        // Every host at once: the head node's network, not counted against the hosts.
        assert_eq!(
            after_failure(&mut p, &outcome(&["n1", "n2"]), &placement, false),
            0
        );
        assert_eq!(p.active(), 2);
        // One host, no spare: its two ranks are the ones a shrink removes.
        assert_eq!(
            after_failure(&mut p, &outcome(&["n2"]), &placement, false),
            2
        );
        assert_eq!(p.state("n2.c"), Some(HostState::Suspect));
        let mut p = HostPool::new(parse_hosts("n1.a,n1.b,n2").unwrap(), 0).unwrap();
        assert_eq!(p.host_lost("n1", &[]), None, "ambiguous short name");
        let mut p = HostPool::new(parse_hosts("10.0.0.1,10.0.0.2").unwrap(), 1).unwrap();
        assert_eq!(p.host_lost("10.0.0.3", &[]), None);
    }

    #[test]
    fn every_host_lost_at_once_is_not_blamed_on_the_hosts() {
        let mut p = HostPool::new(parse_hosts("a,b,c").unwrap(), 1).unwrap();
        let placement = p.placement(4).unwrap();
        assert_eq!(
            after_failure(&mut p, &outcome(&["a", "b"]), &placement, false),
            0
        );
        assert_eq!(p.state("a"), Some(HostState::Active));
        assert_eq!(p.state("c"), Some(HostState::Spare));
        assert_eq!(
            after_failure(&mut p, &outcome(&["b"]), &placement, false),
            0
        );
        assert_eq!(p.state("b"), Some(HostState::Suspect));
        assert_eq!(p.placement(4).unwrap(), ["a", "a", "c", "c"]);
    }

    #[test]
    fn bad_spare_counts_are_refused() {
        assert!(HostPool::new(parse_hosts("a,b").unwrap(), 2).is_err());
        assert!(HostPool::new(Vec::new(), 0).is_err());
    }
}
