//! Which levels a checkpoint goes to, where node-local data lives, and which host a rank
//! runs on.

use std::path::{Path, PathBuf};

/// `LAZARUS_L1_EVERY`: write every n-th checkpoint to L1 (0: never).
pub const L1_EVERY_ENV: &str = "LAZARUS_L1_EVERY";
/// `LAZARUS_L2_EVERY`: copy every n-th checkpoint to the partner rank's host (0: never).
pub const L2_EVERY_ENV: &str = "LAZARUS_L2_EVERY";
/// `LAZARUS_L3_EVERY`: add every n-th checkpoint to its parity group's Reed-Solomon parity
/// (0: never).
pub const L3_EVERY_ENV: &str = "LAZARUS_L3_EVERY";
/// `LAZARUS_L4_EVERY`: write every n-th checkpoint to the durable repository (0: never;
/// default 1).
pub const L4_EVERY_ENV: &str = "LAZARUS_L4_EVERY";
/// `LAZARUS_L1_DIR`: root of the node-local directories (one subdirectory per host).
pub const L1_DIR_ENV: &str = "LAZARUS_L1_DIR";
/// `LAZARUS_HOST`: this rank's host name, set by the cluster launchers.
pub const HOST_ENV: &str = "LAZARUS_HOST";
/// `LAZARUS_SIM_HOSTS=k`: tests on one machine: rank r of n runs on simulated host
/// `sim<r*k/n>` (ignored when `LAZARUS_HOST` is set).
pub const SIM_HOSTS_ENV: &str = "LAZARUS_SIM_HOSTS";

/// The schedule: each level is written on every n-th checkpoint of the job (the job-wide
/// checkpoint number, counted from 1 across restarts), 0 meaning never. The default is
/// today's behaviour: L4 on every checkpoint, no fast level.
///
/// ```
/// use lazarus_levels::Levels;
/// let l = Levels::new().l1(1).l2(2).l4(10);
/// assert!(l.due(3).l1 && !l.due(3).l2 && !l.due(3).l4);
/// assert!(l.due(10).l1 && l.due(10).l2 && l.due(10).l4);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Levels {
    l1: u32,
    l2: u32,
    l3: u32,
    l4: u32,
    dir: Option<PathBuf>,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            l1: 0,
            l2: 0,
            l3: 0,
            l4: 1,
            dir: None,
        }
    }
}

/// The levels one checkpoint goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Node-local (always set when `l2` or `l3` is: the partner copy mirrors the L1
    /// checkpoint, and parity is computed over it).
    pub l1: bool,
    /// Partner copy.
    pub l2: bool,
    /// Parity group.
    pub l3: bool,
    /// Durable repository.
    pub l4: bool,
}

impl Due {
    /// True when a fast level is written.
    pub fn fast(&self) -> bool {
        self.l1 || self.l2 || self.l3
    }
}

fn every(n: u32, seq: u64) -> bool {
    n > 0 && seq % u64::from(n) == 0
}

impl Levels {
    /// L4 on every checkpoint, nothing else (the behaviour without levels).
    pub fn new() -> Self {
        Levels::default()
    }

    /// Node-local copy on every `n`-th checkpoint (0: never).
    pub fn l1(mut self, n: u32) -> Self {
        self.l1 = n;
        self
    }

    /// Partner copy on every `n`-th checkpoint (0: never).
    pub fn l2(mut self, n: u32) -> Self {
        self.l2 = n;
        self
    }

    /// Reed-Solomon parity of the rank's parity group on every `n`-th checkpoint (0:
    /// never; docs/LEVELS.md, "L3 parity").
    pub fn l3(mut self, n: u32) -> Self {
        self.l3 = n;
        self
    }

    /// Durable repository on every `n`-th checkpoint (0: never).
    pub fn l4(mut self, n: u32) -> Self {
        self.l4 = n;
        self
    }

    /// Root of the node-local directories (default: [`default_root`]).
    pub fn dir(mut self, root: impl Into<PathBuf>) -> Self {
        self.dir = Some(root.into());
        self
    }

    /// The configured root, if any.
    pub fn root(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The periods `(l1, l2, l4)`.
    pub fn periods(&self) -> (u32, u32, u32) {
        (self.l1, self.l2, self.l4)
    }

    /// The L3 parity period (0: never).
    pub fn l3_every(&self) -> u32 {
        self.l3
    }

    /// True when a fast level is configured (otherwise the job runs exactly as without
    /// levels).
    pub fn is_multilevel(&self) -> bool {
        self.l1 > 0 || self.l2 > 0 || self.l3 > 0
    }

    /// The levels checkpoint number `seq` goes to.
    pub fn due(&self, seq: u64) -> Due {
        let l2 = every(self.l2, seq);
        let l3 = every(self.l3, seq);
        Due {
            l1: l2 || l3 || every(self.l1, seq),
            l2,
            l3,
            l4: every(self.l4, seq),
        }
    }

    /// Refuses a schedule that writes nothing.
    pub fn validate(&self) -> Result<(), String> {
        if self.l1 == 0 && self.l2 == 0 && self.l3 == 0 && self.l4 == 0 {
            return Err(
                "levels: every level is off (l1, l2, l3 and l4 are 0): no checkpoint would be written"
                    .into(),
            );
        }
        if self.is_multilevel() && self.l1 != 1 && self.l2 != 1 && self.l3 != 1 && self.l4 != 1 {
            // Otherwise some checkpoints the policy asks for would go nowhere.
            return Err(format!(
                "levels: one of l1, l2, l3, l4 must be 1 so that every checkpoint goes to some level (got l1={}, l2={}, l3={}, l4={})",
                self.l1, self.l2, self.l3, self.l4
            ));
        }
        Ok(())
    }

    /// The schedule from `LAZARUS_L1_EVERY`, `LAZARUS_L2_EVERY`, `LAZARUS_L3_EVERY`,
    /// `LAZARUS_L4_EVERY` and
    /// `LAZARUS_L1_DIR` (what `lazarus run --l1-every ...` exports to every rank); `None`
    /// when none of the `*_EVERY` variables is set.
    pub fn from_env() -> Result<Option<Levels>, String> {
        let read = |name: &str| -> Result<Option<u32>, String> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse::<u32>().map(Some).map_err(|_| {
                    format!("{name}={v:?}: expected a number of checkpoints (0 = never)")
                }),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not UTF-8")),
            }
        };
        let (l1, l2, l3, l4) = (
            read(L1_EVERY_ENV)?,
            read(L2_EVERY_ENV)?,
            read(L3_EVERY_ENV)?,
            read(L4_EVERY_ENV)?,
        );
        if l1.is_none() && l2.is_none() && l3.is_none() && l4.is_none() {
            return Ok(None);
        }
        let mut l = Levels::new()
            .l1(l1.unwrap_or(0))
            .l2(l2.unwrap_or(0))
            .l3(l3.unwrap_or(0))
            .l4(l4.unwrap_or(1));
        if let Some(d) = std::env::var_os(L1_DIR_ENV) {
            l = l.dir(PathBuf::from(d));
        }
        Ok(Some(l))
    }
}

/// The default root of node-local data for the job whose durable repository is at
/// `repo_location`: `/dev/shm/lazarus-<16 hex>` when `/dev/shm` exists (a RAM file
/// system on Linux), else the same name in the temporary directory. The name is derived
/// from the repository, so a restarted job finds its node-local data again.
pub fn default_root(repo_location: &str) -> PathBuf {
    let tag = blake3::hash(repo_location.as_bytes()).to_hex();
    let name = format!("lazarus-{}", &tag.as_str()[..16]);
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join(name)
    } else {
        std::env::temp_dir().join(name)
    }
}

/// This rank's host: `LAZARUS_HOST`, else the simulated host of `LAZARUS_SIM_HOSTS`,
/// else the machine's host name. It names a directory, so only `[A-Za-z0-9._-]` are
/// accepted (an error names the variable and the value).
pub fn host_identity(rank: u32, size: u32) -> Result<String, String> {
    let host = if let Ok(h) = std::env::var(HOST_ENV) {
        h
    } else if let Ok(k) = std::env::var(SIM_HOSTS_ENV) {
        let k: u32 = k
            .trim()
            .parse()
            .ok()
            .filter(|k| *k > 0)
            .ok_or_else(|| format!("{SIM_HOSTS_ENV}={k:?}: expected a positive number"))?;
        let h = u64::from(rank) * u64::from(k) / u64::from(size.max(1));
        format!("sim{h}")
    } else {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".to_string())
    };
    let ok = !host.is_empty()
        && host != "."
        && host != ".."
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(host)
    } else {
        Err(format!(
            "host name {host:?} (from {HOST_ENV} or the machine) cannot name a node-local directory: only letters, digits, '.', '_' and '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_is_l4_only_and_l2_implies_l1() {
        let d = Levels::new();
        assert!(!d.is_multilevel());
        assert_eq!(
            d.due(7),
            Due {
                l1: false,
                l2: false,
                l3: false,
                l4: true
            }
        );
        let l = Levels::new().l2(3).l4(0);
        assert_eq!(
            l.due(3),
            Due {
                l1: true,
                l2: true,
                l3: false,
                l4: false
            }
        );
        assert!(!l.due(4).fast());
        let l = Levels::new().l1(1).l3(4).l4(0);
        assert!(l.is_multilevel() && l.validate().is_ok());
        assert_eq!(
            l.due(8),
            Due {
                l1: true,
                l2: false,
                l3: true,
                l4: false
            }
        );
        assert!(!l.due(7).l3);
        let l = Levels::new().l3(1).l4(0);
        assert!(l.due(1).l1, "L3 parity is computed over the L1 checkpoint");
        assert!(Levels::new().l4(0).validate().is_err());
    }
}
