//! Which levels a checkpoint goes to, where node-local data lives, and which host a rank
//! runs on.

use lazarus_store::Codec;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// `LAZARUS_L1_EVERY`: write every n-th checkpoint to L1 (0: never), or the first
/// checkpoint at least a duration after the previous L1 write (`30s`, `5m`, `1h`, `500ms`;
/// see [`Period`]). The same syntax holds for the other `*_EVERY` variables.
pub const L1_EVERY_ENV: &str = "LAZARUS_L1_EVERY";
/// `LAZARUS_L2_EVERY`: copy every n-th checkpoint to the partner rank's host (0: never).
pub const L2_EVERY_ENV: &str = "LAZARUS_L2_EVERY";
/// `LAZARUS_L3_EVERY`: add every n-th checkpoint to its parity group's Reed-Solomon parity
/// (0: never).
pub const L3_EVERY_ENV: &str = "LAZARUS_L3_EVERY";
/// `LAZARUS_L4_EVERY`: write every n-th checkpoint to the durable repository (0: never;
/// default 1).
pub const L4_EVERY_ENV: &str = "LAZARUS_L4_EVERY";
/// Environment variable: the most members of an L3 parity group ([`Levels::l3_group`]).
pub const L3_GROUP_ENV: &str = "LAZARUS_L3_GROUP";
/// Environment variable: the parity shards of an L3 group ([`Levels::l3_shards`]).
pub const L3_SHARDS_ENV: &str = "LAZARUS_L3_SHARDS";
/// Environment variable: the fast levels' codec ([`Levels::fast_codec`]: `none`, `auto`
/// or `zstd`).
pub const FAST_CODEC_ENV: &str = "LAZARUS_FAST_CODEC";
/// `LAZARUS_L1_DIR`: root of the node-local directories (one subdirectory per host).
pub const L1_DIR_ENV: &str = "LAZARUS_L1_DIR";
/// `LAZARUS_HOST`: this rank's host name, set by the cluster launchers.
pub const HOST_ENV: &str = "LAZARUS_HOST";
/// `LAZARUS_SIM_HOSTS=k`: tests on one machine: rank r of n runs on simulated host
/// `sim<r*k/n>` (ignored when `LAZARUS_HOST` is set).
pub const SIM_HOSTS_ENV: &str = "LAZARUS_SIM_HOSTS";

/// How often one level is written.
///
/// A count is deterministic: every rank computes the same answer from the job-wide
/// checkpoint number. An interval is decided by rank 0's clock and broadcast with the
/// checkpoint, so every rank writes the same levels (docs/LEVELS.md, "Schedule").
///
/// ```
/// use lazarus_levels::Period;
/// use std::time::Duration;
/// assert_eq!("5".parse::<Period>(), Ok(Period::Checkpoints(5)));
/// assert_eq!("0".parse::<Period>(), Ok(Period::Never));
/// assert_eq!("10m".parse::<Period>(), Ok(Period::Interval(Duration::from_secs(600))));
/// assert!("10 parsecs".parse::<Period>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Period {
    /// The level is off.
    #[default]
    Never,
    /// Every n-th checkpoint (n ≥ 1) of the job-wide numbering.
    Checkpoints(u32),
    /// The first checkpoint at least this long after the level was last written (or after
    /// the job's start in this incarnation).
    Interval(Duration),
}

impl Period {
    /// A count of checkpoints; 0 means [`Period::Never`].
    pub fn checkpoints(n: u32) -> Self {
        if n == 0 {
            Period::Never
        } else {
            Period::Checkpoints(n)
        }
    }

    /// True unless [`Period::Never`].
    pub fn is_on(&self) -> bool {
        *self != Period::Never
    }

    /// Whether checkpoint `seq` is due, `since` after the level was last written.
    fn due(&self, seq: u64, since: Duration) -> bool {
        match *self {
            Period::Never => false,
            Period::Checkpoints(n) => n > 0 && seq % u64::from(n) == 0,
            Period::Interval(d) => since >= d,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Never => f.write_str("0"),
            Period::Checkpoints(n) => write!(f, "{n}"),
            Period::Interval(d) if d.subsec_millis() != 0 || d.as_secs() == 0 => {
                write!(f, "{}ms", d.as_millis())
            }
            Period::Interval(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

impl FromStr for Period {
    type Err = String;

    /// `N` (checkpoints, 0 = never) or a duration `N` + `ms`, `s`, `m` or `h`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "{s:?}: expected a number of checkpoints (0 = never) or a duration such as 500ms, 30s, 10m, 2h"
            )
        };
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(digits);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let millis = match unit {
            "" => return u32::try_from(n).map(Period::checkpoints).map_err(|_| bad()),
            "ms" => Some(n),
            "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => None,
        };
        match millis {
            Some(0) => Ok(Period::Never),
            Some(ms) => Ok(Period::Interval(Duration::from_millis(ms))),
            None => Err(bad()),
        }
    }
}

/// The schedule: each level is written on every n-th checkpoint of the job (the job-wide
/// checkpoint number, counted from 1 across restarts), or on the first checkpoint at least
/// an interval after its previous write ([`Period`]). The default is today's behaviour:
/// L4 on every checkpoint, no fast level.
///
/// ```
/// use lazarus_levels::Levels;
/// let l = Levels::new().l1(1).l2(2).l4(10);
/// assert!(l.due(3).l1 && !l.due(3).l2 && !l.due(3).l4);
/// assert!(l.due(10).l1 && l.due(10).l2 && l.due(10).l4);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Levels {
    /// L1, L2, L3, L4.
    every: [Period; 4],
    dir: Option<PathBuf>,
    /// The most members of an L3 parity group (0: one group per row of hosts).
    l3_group: u32,
    /// Parity shards per L3 group (0: the default, 2).
    l3_shards: u32,
    /// How the fast levels (L1, the L2 copies, the L3 regions) store chunks.
    fast_codec: Codec,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            every: [
                Period::Never,
                Period::Never,
                Period::Never,
                Period::Checkpoints(1),
            ],
            dir: None,
            l3_group: 0,
            l3_shards: 0,
            fast_codec: Codec::None,
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

    /// One byte (bit i: level i + 1), for broadcasting rank 0's decision.
    pub fn to_bits(self) -> u8 {
        u8::from(self.l1) | u8::from(self.l2) << 1 | u8::from(self.l3) << 2 | u8::from(self.l4) << 3
    }

    /// The inverse of [`Due::to_bits`] (higher bits ignored).
    pub fn from_bits(b: u8) -> Self {
        Due {
            l1: b & 1 != 0,
            l2: b & 2 != 0,
            l3: b & 4 != 0,
            l4: b & 8 != 0,
        }
    }
}

/// When each level was last written, for [`Period::Interval`] schedules (one per job
/// incarnation: intervals count from the job's start, not across restarts).
#[derive(Clone, Debug)]
pub struct LevelClock {
    last: [Instant; 4],
}

impl LevelClock {
    /// Every level "written" at `now` (the job's start).
    pub fn new(now: Instant) -> Self {
        LevelClock { last: [now; 4] }
    }

    /// Records that level `level` (1 to 4; others are ignored) was last written `ago`
    /// before `now` (e.g. the newest durable checkpoint, found at a restart).
    pub fn written_ago(&mut self, level: u8, ago: Duration, now: Instant) {
        if let Some(t) = self.last.get_mut(usize::from(level.wrapping_sub(1))) {
            *t = now.checked_sub(ago).unwrap_or(now);
        }
    }

    /// Records that the levels in `due` were written at `now`.
    pub fn written(&mut self, due: Due, now: Instant) {
        for (i, on) in [due.l1, due.l2, due.l3, due.l4].into_iter().enumerate() {
            if on {
                self.last[i] = now;
            }
        }
    }

    fn since(&self, now: Instant) -> [Duration; 4] {
        self.last.map(|t| now.saturating_duration_since(t))
    }
}

impl Levels {
    /// L4 on every checkpoint, nothing else (the behaviour without levels).
    pub fn new() -> Self {
        Levels::default()
    }

    /// Node-local copy on every `n`-th checkpoint (0: never).
    pub fn l1(self, n: u32) -> Self {
        self.every(0, Period::checkpoints(n))
    }

    /// Partner copy on every `n`-th checkpoint (0: never).
    pub fn l2(self, n: u32) -> Self {
        self.every(1, Period::checkpoints(n))
    }

    /// Reed-Solomon parity of the rank's parity group on every `n`-th checkpoint (0:
    /// never; docs/LEVELS.md, "L3 parity").
    pub fn l3(self, n: u32) -> Self {
        self.every(2, Period::checkpoints(n))
    }

    /// L3 parity groups of at most `k` members, each on its own host (0, the default:
    /// one group per row of hosts, i.e. as many members as hosts; docs/LEVELS.md, "L3
    /// parity groups"). Smaller groups make a parity round and a rebuild cheaper and
    /// survive one lost host per group; `k` must not be 1.
    pub fn l3_group(mut self, k: u32) -> Self {
        self.l3_group = k;
        self
    }

    /// The L3 group size ([`Levels::l3_group`]; 0: no limit).
    pub fn l3_group_size(&self) -> u32 {
        self.l3_group
    }

    /// `m` Reed-Solomon parity shards per L3 group (default 2, at least 2; a group of k
    /// members keeps at most k), each on a member's host: any ⌊m / 2⌋ lost hosts of one
    /// group are rebuilt (docs/LEVELS.md, "L3 parity groups"). More shards cost parity
    /// storage and encoding time per round.
    pub fn l3_shards(mut self, m: u32) -> Self {
        self.l3_shards = m;
        self
    }

    /// The configured parity shards per group ([`Levels::l3_shards`]; 0: the default).
    pub fn l3_shards_count(&self) -> u32 {
        self.l3_shards
    }

    /// How L1 stores chunks, and so what L2 copies and L3 encodes (their files are L1's
    /// as they are). The default, [`Codec::None`], stores them raw: in RAM and over a
    /// network that moves GB/s, zstd (350 MB/s per core on compressible data here)
    /// costs more time than the bytes it saves (docs/LEVELS.md, "Compression on the fast
    /// levels"). [`Codec::Auto`] trades that time for node-local memory and partner
    /// traffic. The durable repository keeps the job's own codec.
    pub fn fast_codec(mut self, codec: Codec) -> Self {
        self.fast_codec = codec;
        self
    }

    /// The fast levels' codec ([`Levels::fast_codec`]).
    pub fn fast_codec_policy(&self) -> Codec {
        self.fast_codec
    }

    /// Durable repository on every `n`-th checkpoint (0: never).
    pub fn l4(self, n: u32) -> Self {
        self.every(3, Period::checkpoints(n))
    }

    /// Sets the period of level `level` (1 to 4; others are ignored), by count or by
    /// interval:
    ///
    /// ```
    /// use lazarus_levels::{Levels, Period};
    /// use std::time::Duration;
    /// let l = Levels::new().l1(1).period(4, Period::Interval(Duration::from_secs(3600)));
    /// assert!(l.validate().is_ok() && !l.due(1).l4);
    /// ```
    pub fn period(self, level: u8, p: Period) -> Self {
        match level {
            1..=4 => self.every(usize::from(level - 1), p),
            _ => self,
        }
    }

    fn every(mut self, i: usize, p: Period) -> Self {
        self.every[i] = p;
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

    /// The periods of L1, L2, L3 and L4.
    pub fn periods(&self) -> [Period; 4] {
        self.every
    }

    /// True when L2 partner copies are on.
    pub fn has_l2(&self) -> bool {
        self.every[1].is_on()
    }

    /// True when L3 parity is on.
    pub fn has_l3(&self) -> bool {
        self.every[2].is_on()
    }

    /// True when the durable repository is written at all.
    pub fn has_l4(&self) -> bool {
        self.every[3].is_on()
    }

    /// True when some level is scheduled by time, so rank 0 decides and broadcasts.
    pub fn has_intervals(&self) -> bool {
        self.every.iter().any(|p| matches!(p, Period::Interval(_)))
    }

    /// True when a fast level is configured (otherwise the job runs exactly as without
    /// levels).
    pub fn is_multilevel(&self) -> bool {
        self.every[..3].iter().any(Period::is_on)
    }

    /// The levels checkpoint number `seq` goes to, counting periods only (an interval
    /// level is never due here; see [`Levels::due_at`]).
    pub fn due(&self, seq: u64) -> Due {
        self.due_since(seq, [Duration::ZERO; 4])
    }

    /// The levels checkpoint number `seq` goes to at `now`, with `clock` saying when each
    /// level was last written.
    pub fn due_at(&self, seq: u64, clock: &LevelClock, now: Instant) -> Due {
        self.due_since(seq, clock.since(now))
    }

    fn due_since(&self, seq: u64, since: [Duration; 4]) -> Due {
        let [l1, l2, l3, l4] = [0, 1, 2, 3].map(|i| self.every[i].due(seq, since[i]));
        Due {
            l1: l2 || l3 || l1,
            l2,
            l3,
            l4,
        }
    }

    /// Refuses a schedule that writes nothing.
    pub fn validate(&self) -> Result<(), String> {
        if self.l3_shards == 1 || self.l3_shards as usize > crate::l3::MAX_PARITY_SHARDS {
            return Err(format!(
                "levels: l3 shards {}: between 2 and 64 (a group of k members keeps at most k; with 1 the shard's own host takes it and its member together)",
                self.l3_shards
            ));
        }
        if self.l3_group == 1 {
            return Err(
                "levels: l3 group of 1: a parity group needs at least 2 members (0: one group per row of hosts)"
                    .into(),
            );
        }
        if !self.every.iter().any(Period::is_on) {
            return Err(
                "levels: every level is off (l1, l2, l3 and l4 are 0): no checkpoint would be written"
                    .into(),
            );
        }
        if let Period::Interval(d) = self.every[2] {
            // Node-local retention keeps the newest n checkpoints so that the newest parity
            // round's members are still there; with a time period there is no such n.
            return Err(format!(
                "levels: l3 every {}: L3 parity takes a number of checkpoints, not a duration (its members' L1 copies are kept for that many checkpoints)",
                Period::Interval(d)
            ));
        }
        if self.is_multilevel() && !self.every.contains(&Period::Checkpoints(1)) {
            // Otherwise some checkpoints the policy asks for would go nowhere.
            let [l1, l2, l3, l4] = self.every;
            return Err(format!(
                "levels: one of l1, l2, l3, l4 must be 1 so that every checkpoint goes to some level (got l1={l1}, l2={l2}, l3={l3}, l4={l4})"
            ));
        }
        Ok(())
    }

    /// The schedule from `LAZARUS_L1_EVERY`, `LAZARUS_L2_EVERY`, `LAZARUS_L3_EVERY`,
    /// `LAZARUS_L4_EVERY` (each a [`Period`]: `N` checkpoints or a duration),
    /// `LAZARUS_L3_GROUP`, `LAZARUS_L3_SHARDS` (numbers), `LAZARUS_FAST_CODEC` and `LAZARUS_L1_DIR` (what `lazarus run --l1-every ...` exports to every rank); `None`
    /// when none of the `*_EVERY` variables is set. An error names the variable.
    pub fn from_env() -> Result<Option<Levels>, String> {
        let read = |name: &str| -> Result<Option<Period>, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse::<Period>()
                    .map(Some)
                    .map_err(|e| format!("{name}={e}")),
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not UTF-8")),
            }
        };
        let every = [L1_EVERY_ENV, L2_EVERY_ENV, L3_EVERY_ENV, L4_EVERY_ENV].map(read);
        let mut l = Levels::new();
        let mut any = false;
        for (i, p) in every.into_iter().enumerate() {
            let p = p?;
            any |= p.is_some();
            if let Some(p) = p {
                l = l.every(i, p);
            }
        }
        if !any {
            return Ok(None);
        }
        if let Some(d) = std::env::var_os(L1_DIR_ENV) {
            l = l.dir(PathBuf::from(d));
        }
        if let Ok(v) = std::env::var(FAST_CODEC_ENV) {
            l = l.fast_codec(v.parse().map_err(|e| format!("{FAST_CODEC_ENV}={e}"))?);
        }
        for (name, set) in [
            (L3_GROUP_ENV, Levels::l3_group as fn(Levels, u32) -> Levels),
            (L3_SHARDS_ENV, Levels::l3_shards),
        ] {
            if let Ok(v) = std::env::var(name) {
                let n = v
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{name}={v:?}: expected a number"))?;
                l = set(l, n);
            }
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

/// Makes the node-local root `root` safe to keep copies in, before any is read or written:
/// created (with its missing parents) with mode 0700 when absent; when present, it must be
/// a real directory (not a symlink) owned by this user with no group or other write
/// permission. The default root has a predictable name in a world-writable directory
/// (`/dev/shm`): another local user could otherwise plant it and read or forge the copies
/// a restart would use. The error names the path and what is wrong.
pub fn ensure_private_root(root: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let shown = root.display();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| format!("node-local root {shown}: creating it: {e}"))?;
    let m = std::fs::symlink_metadata(root).map_err(|e| format!("node-local root {shown}: {e}"))?;
    let problem = if m.file_type().is_symlink() {
        Some("it is a symbolic link, not a directory".to_string())
    } else if !m.is_dir() {
        Some("it is not a directory".to_string())
    } else if m.uid() != euid() {
        Some(format!(
            "it is owned by uid {}, not by this user (uid {})",
            m.uid(),
            euid()
        ))
    } else if m.mode() & 0o022 != 0 && m.mode() & 0o1000 != 0 {
        // `/dev/shm` or `/tmp` itself given as the root: chmod is not the answer.
        Some(format!(
            "it is a directory shared by every user (mode {:o}, like /dev/shm itself): give \
             a directory of this job's own inside it, such as {}",
            m.mode() & 0o7777,
            root.join("lazarus-l1").display()
        ))
    } else if m.mode() & 0o022 != 0 {
        Some(format!(
            "its mode {:o} lets other users write into it (chmod go-w, or remove it)",
            m.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        Some(p) => Err(format!(
            "node-local root {shown}: {p}; refusing to keep or restore checkpoint copies there \
             (another user could read or forge them)"
        )),
        None => Ok(()),
    }
}

/// This process's effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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
    if is_host_dir_name(&host) {
        Ok(host)
    } else {
        Err(format!(
            "host name {host:?} (from {HOST_ENV} or the machine) cannot name a node-local directory: only letters, digits, '.', '_' and '-'"
        ))
    }
}

/// True when `host` can name a host's node-local directory: one path component of
/// `[A-Za-z0-9._-]`, not `.` or `..` (hosts named by the environment, and hosts read
/// back from parity records).
pub(crate) fn is_host_dir_name(host: &str) -> bool {
    !host.is_empty()
        && host != "."
        && host != ".."
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
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

    #[test]
    fn periods_parse_and_print_back() {
        for (text, p) in [
            ("0", Period::Never),
            ("0s", Period::Never),
            ("7", Period::Checkpoints(7)),
            (" 12 ", Period::Checkpoints(12)),
            ("500ms", Period::Interval(Duration::from_millis(500))),
            ("30s", Period::Interval(Duration::from_secs(30))),
            ("2h", Period::Interval(Duration::from_secs(7200))),
        ] {
            assert_eq!(text.parse::<Period>(), Ok(p), "{text:?}");
            assert_eq!(p.to_string().parse::<Period>(), Ok(p), "{p} prints back");
        }
        for bad in [
            "",
            "s",
            "-1",
            "1.5s",
            "5 s",
            "3d",
            "99999999999",
            "18446744073709551615h",
        ] {
            let e = bad.parse::<Period>().expect_err(bad);
            assert!(e.contains("duration"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn interval_levels_are_due_once_their_time_has_passed() {
        let t0 = Instant::now();
        let l = Levels::new()
            .l1(1)
            .period(2, Period::Interval(Duration::from_secs(10)))
            .period(4, Period::Interval(Duration::from_secs(60)));
        assert!(l.validate().is_ok() && l.has_intervals() && l.has_l2() && l.has_l4());
        let mut clock = LevelClock::new(t0);
        let at = |s| t0 + Duration::from_secs(s);
        // After a restart, L4 counts from its last write found in the repository.
        let mut restarted = LevelClock::new(at(100));
        restarted.written_ago(4, Duration::from_secs(50), at(100));
        assert!(
            l.due_at(1, &restarted, at(110)).l4,
            "60 s since the last L4 write"
        );
        assert!(!l.due_at(1, &restarted, at(109)).l4);
        restarted.written_ago(9, Duration::ZERO, at(100)); // ignored
        assert_eq!(l.due_at(1, &clock, at(5)).to_bits(), 0b0001);
        assert_eq!(l.due_at(2, &clock, at(10)).to_bits(), 0b0011);
        clock.written(l.due_at(2, &clock, at(10)), at(10));
        assert_eq!(
            l.due_at(3, &clock, at(19)).to_bits(),
            0b0001,
            "L2 counts from its last write"
        );
        assert_eq!(l.due_at(4, &clock, at(61)).to_bits(), 0b1011);
        // Without a clock an interval level is never due (the count-only view).
        assert!(!l.due(1000).l2 && !l.due(1000).l4);
        // Every level by time: some checkpoints would go nowhere.
        let only_time = Levels::new()
            .period(1, Period::Interval(Duration::from_secs(1)))
            .l4(0);
        assert!(only_time.validate().is_err());
        let l3_by_time = Levels::new()
            .l1(1)
            .period(3, Period::Interval(Duration::from_secs(1)));
        let e = l3_by_time.validate().expect_err("L3 by time");
        assert!(e.contains("l3 every 1s"), "{e}");
        for b in 0..16u8 {
            assert_eq!(Due::from_bits(b).to_bits(), b);
        }
    }

    /// The only test of this crate that sets `LAZARUS_*` variables (no other test reads
    /// these two).
    #[test]
    fn the_fast_codec_comes_from_the_environment_and_a_bad_one_is_named() {
        assert_eq!(Levels::new().fast_codec_policy(), Codec::None);
        std::env::set_var(L1_EVERY_ENV, "1");
        std::env::set_var(FAST_CODEC_ENV, "Zstd");
        let l = Levels::from_env();
        std::env::set_var(FAST_CODEC_ENV, "lz4");
        let bad = Levels::from_env();
        std::env::remove_var(FAST_CODEC_ENV);
        std::env::remove_var(L1_EVERY_ENV);
        assert_eq!(l.unwrap().unwrap().fast_codec_policy(), Codec::Zstd);
        let e = bad.unwrap_err();
        assert!(e.contains("LAZARUS_FAST_CODEC") && e.contains("lz4"), "{e}");
        for c in [Codec::None, Codec::Auto, Codec::Zstd] {
            assert_eq!(c.to_string().parse::<Codec>(), Ok(c));
        }
    }
}
