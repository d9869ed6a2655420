//! Timeouts and limits of the runtime: one value, read from the environment (or built in
//! code), validated in one place before use.

use crate::auth::FrameMac;
use crate::error::{ErrorKind, NetError, Result};
use std::time::Duration;

/// Environment variable: heartbeat interval in milliseconds.
pub const ENV_HEARTBEAT_MS: &str = "LAZARUS_HEARTBEAT_MS";
/// Environment variable: failure timeout in milliseconds.
pub const ENV_FAILURE_TIMEOUT_MS: &str = "LAZARUS_FAILURE_TIMEOUT_MS";
/// Environment variable: connect/rendezvous timeout in milliseconds.
pub const ENV_CONNECT_TIMEOUT_MS: &str = "LAZARUS_CONNECT_TIMEOUT_MS";
/// Environment variable: maximum frame size in bytes.
pub const ENV_MAX_FRAME: &str = "LAZARUS_MAX_FRAME";
/// Environment variable: `on` (default) or `off`, see [`FrameMac`]. Job-wide: `lazarus
/// run` hands its own value to every rank; under srun/mpirun export it for every rank.
pub const ENV_FRAME_MAC: &str = "LAZARUS_FRAME_MAC";

/// Smallest accepted frame limit: headers plus a useful payload.
pub const MIN_FRAME: u32 = 4096;
/// Largest accepted frame limit (1 GiB): a length prefix beyond this is garbage.
pub const MAX_FRAME_LIMIT: u32 = 1 << 30;

/// Timeouts and limits shared by the communicator, the rendezvous and the launcher.
///
/// Guarantee: a value returned by [`NetConfig::validated`] or [`NetConfig::from_env`] has
/// `heartbeat_interval * 2 <= failure_timeout`, non-zero timeouts, and a frame limit in
/// `MIN_FRAME..=MAX_FRAME_LIMIT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// How often a live rank proves it is alive on every connection.
    pub heartbeat_interval: Duration,
    /// Silence (or an unrepaired connection loss) longer than this declares a peer dead;
    /// every blocking call returns an error within about this time after a peer dies.
    pub failure_timeout: Duration,
    /// Bound on connecting to the coordinator, the rendezvous and each handshake.
    pub connect_timeout: Duration,
    /// Largest frame accepted on the wire; larger messages are split into fragments.
    pub max_frame: u32,
    /// How long a receiver spins before blocking (thread wake-ups are costly).
    pub spin: Duration,
    /// What the frame MAC covers; must be the same on every rank and the rendezvous
    /// (a handshake between two settings is refused).
    pub frame_mac: FrameMac,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            heartbeat_interval: Duration::from_millis(250),
            failure_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(20),
            max_frame: 64 << 20,
            spin: Duration::from_micros(100),
            frame_mac: FrameMac::On,
        }
    }
}

/// The value of `name`, if set; an error naming it if it is not UTF-8.
fn env_str(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(NetError::new(
            ErrorKind::Config,
            format!("{name} is not valid UTF-8"),
        )),
    }
}

fn env_u64(name: &str) -> Result<Option<u64>> {
    env_str(name)?
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                NetError::new(
                    ErrorKind::Config,
                    format!("{name}={v:?} is not a non-negative integer"),
                )
            })
        })
        .transpose()
}

impl NetConfig {
    /// Defaults overridden by `LAZARUS_HEARTBEAT_MS`, `LAZARUS_FAILURE_TIMEOUT_MS`,
    /// `LAZARUS_CONNECT_TIMEOUT_MS`, `LAZARUS_MAX_FRAME`, `LAZARUS_FRAME_MAC`; validated.
    pub fn from_env() -> Result<Self> {
        let mut c = NetConfig::default();
        if let Some(v) = env_u64(ENV_HEARTBEAT_MS)? {
            c.heartbeat_interval = Duration::from_millis(v);
        }
        if let Some(v) = env_u64(ENV_FAILURE_TIMEOUT_MS)? {
            c.failure_timeout = Duration::from_millis(v);
        }
        if let Some(v) = env_u64(ENV_CONNECT_TIMEOUT_MS)? {
            c.connect_timeout = Duration::from_millis(v);
        }
        if let Some(v) = env_u64(ENV_MAX_FRAME)? {
            c.max_frame = u32::try_from(v).map_err(|_| {
                NetError::new(
                    ErrorKind::Config,
                    format!("{ENV_MAX_FRAME}={v} is too large"),
                )
            })?;
        }
        if let Some(v) = env_str(ENV_FRAME_MAC)? {
            c.frame_mac = v.parse().map_err(|e: NetError| e.context(ENV_FRAME_MAC))?;
        }
        c.validated()
    }

    /// Checks the invariants listed on the type; the error names the offending field.
    pub fn validated(self) -> Result<Self> {
        let bad = |m: String| Err(NetError::new(ErrorKind::Config, m));
        if self.heartbeat_interval.is_zero() {
            return bad("heartbeat interval must be > 0".into());
        }
        if self.heartbeat_interval * 2 > self.failure_timeout {
            return bad(format!(
                "failure timeout ({:?}) must be at least twice the heartbeat interval ({:?})",
                self.failure_timeout, self.heartbeat_interval
            ));
        }
        if self.connect_timeout.is_zero() {
            return bad("connect timeout must be > 0".into());
        }
        if !(MIN_FRAME..=MAX_FRAME_LIMIT).contains(&self.max_frame) {
            return bad(format!(
                "max frame {} outside {MIN_FRAME}..={MAX_FRAME_LIMIT}",
                self.max_frame
            ));
        }
        Ok(self)
    }

    /// The longest a rank started by a Lazarus launcher may keep running after it last heard
    /// the launcher: its watch gives up after the failure timeout, and acts within two
    /// heartbeat intervals (docs/RUNTIME.md, "Ranks that lose their launcher").
    pub fn rank_outlives_launcher(&self) -> Duration {
        self.failure_timeout + self.heartbeat_interval * 2
    }

    /// The environment variables that reproduce this configuration in a child process.
    pub fn to_env(&self) -> Vec<(String, String)> {
        vec![
            (
                ENV_HEARTBEAT_MS.into(),
                self.heartbeat_interval.as_millis().to_string(),
            ),
            (
                ENV_FAILURE_TIMEOUT_MS.into(),
                self.failure_timeout.as_millis().to_string(),
            ),
            (
                ENV_CONNECT_TIMEOUT_MS.into(),
                self.connect_timeout.as_millis().to_string(),
            ),
            (ENV_MAX_FRAME.into(), self.max_frame.to_string()),
            (ENV_FRAME_MAC.into(), self.frame_mac.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_name_the_field() {
        assert!(NetConfig::default().validated().is_ok());
        let c = NetConfig {
            failure_timeout: Duration::from_millis(100),
            ..NetConfig::default()
        };
        let e = c.validated().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("failure timeout"));
        let c = NetConfig {
            max_frame: 10,
            ..NetConfig::default()
        };
        assert!(c.validated().unwrap_err().to_string().contains("max frame"));
    }

    #[test]
    fn the_frame_mac_setting_parses_strictly_and_reaches_child_processes() {
        assert_eq!(" off\n".parse::<FrameMac>().unwrap(), FrameMac::Off);
        assert_eq!("on".parse::<FrameMac>().unwrap(), FrameMac::On);
        for bad in ["", "0", "false", "OFF", "none"] {
            let e = bad.parse::<FrameMac>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(e.to_string().contains("expected \"on\" or \"off\""), "{e}");
        }
        let c = NetConfig {
            frame_mac: FrameMac::Off,
            ..NetConfig::default()
        };
        assert!(c
            .to_env()
            .contains(&(ENV_FRAME_MAC.to_string(), "off".to_string())));
        assert_eq!(NetConfig::default().frame_mac, FrameMac::On);
    }
}
