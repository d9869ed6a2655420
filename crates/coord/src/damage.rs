//! What a restore does when the repository holds committed checkpoints and every one is
//! damaged (issue #11 item 4): never a silent fresh start. One policy type and one message
//! for both runtimes (the Job API and [`crate::AsyncSession`]).

use lazarus_store::Damage;
use std::io::Write;
use std::path::Path;

/// Environment variable choosing [`OnAllDamaged`] when the program did not
/// (`refuse` or `start-fresh`); e.g. `lazarus run --env LAZARUS_ON_ALL_DAMAGED=start-fresh`.
pub const ON_ALL_DAMAGED_ENV: &str = "LAZARUS_ON_ALL_DAMAGED";

/// What a restore does when the repository holds committed checkpoints but every one of
/// them is damaged.
///
/// Decision: the default is [`OnAllDamaged::Refuse`], supervised or not. Starting from
/// scratch throws away all the progress those checkpoints held, and a damaged repository is
/// often repairable (a disk that came back, a file restored from a backup); a laptop user
/// whose only checkpoint is corrupt gets an error that says how to start fresh instead of a
/// silent restart from step 0. Under `lazarus run` the refusal stops the supervisor at once
/// (no restart loop). A repository with no committed checkpoint at all is not damage: that
/// is an ordinary fresh start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnAllDamaged {
    /// Fail, naming every damaged checkpoint and how to start fresh anyway.
    #[default]
    Refuse,
    /// Start from the initial state as for an empty repository, saying so on rank 0's
    /// stderr. New checkpoints continue the repository's ids.
    StartFresh,
}

impl std::str::FromStr for OnAllDamaged {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "refuse" => Ok(OnAllDamaged::Refuse),
            "start-fresh" => Ok(OnAllDamaged::StartFresh),
            other => Err(format!(
                "{ON_ALL_DAMAGED_ENV}={other:?}: expected `refuse` or `start-fresh`"
            )),
        }
    }
}

impl OnAllDamaged {
    /// The policy `LAZARUS_ON_ALL_DAMAGED` asks for, if it is set; an error naming the
    /// variable for any other value.
    pub fn from_env() -> Result<Option<OnAllDamaged>, String> {
        match std::env::var(ON_ALL_DAMAGED_ENV) {
            Ok(v) => v.parse().map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(format!("{ON_ALL_DAMAGED_ENV}: {e}")),
        }
    }
}

/// `checkpoint 3: corrupt (...): ...; checkpoint 2: missing (...): ...`, at most 5 named.
fn describe(damaged: &[Damage]) -> String {
    const SHOWN: usize = 5;
    let mut out: Vec<String> = damaged
        .iter()
        .take(SHOWN)
        .map(crate::restore::describe_damage)
        .collect();
    if damaged.len() > SHOWN {
        out.push(format!("and {} more", damaged.len() - SHOWN));
    }
    out.join("; ")
}

/// The refusal: the repository, every damaged checkpoint, and how to start fresh anyway.
pub fn all_damaged_message(repo: &Path, damaged: &[Damage]) -> String {
    format!(
        "every committed checkpoint in {} is damaged or lost: {}; refusing to start from \
         scratch, which would lose all their progress: repair or move the repository away, \
         or allow a fresh start with OnAllDamaged::StartFresh (JobBuilder::on_all_damaged, \
         AsyncConfig::on_all_damaged) or {ON_ALL_DAMAGED_ENV}=start-fresh",
        repo.display(),
        describe(damaged)
    )
}

/// Rank 0, when every committed checkpoint is damaged: said on stderr whatever the policy
/// (a fresh start that gives up checkpoints must never be silent), and logged.
pub fn announce_all_damaged(repo: &Path, damaged: &[Damage], policy: OnAllDamaged) {
    let line = match policy {
        OnAllDamaged::Refuse => format!("lazarus: {}", all_damaged_message(repo, damaged)),
        OnAllDamaged::StartFresh => format!(
            "lazarus: WARNING: every committed checkpoint in {} is damaged or lost: {}; starting \
             from scratch as configured (on_all_damaged = StartFresh): the progress they \
             held is lost",
            repo.display(),
            describe(damaged)
        ),
    };
    tracing::error!("{line}");
    // A closed or full stderr must not turn the refusal into a panic.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use lazarus_format::CheckpointId;

    #[test]
    fn policy_parses_and_the_message_names_every_checkpoint() {
        assert_eq!("refuse".parse(), Ok(OnAllDamaged::Refuse));
        assert_eq!("start-fresh".parse(), Ok(OnAllDamaged::StartFresh));
        assert!("fresh"
            .parse::<OnAllDamaged>()
            .unwrap_err()
            .contains(ON_ALL_DAMAGED_ENV));
        let d = |id| Damage {
            checkpoint: CheckpointId(id),
            path: "x".into(),
            kind: "corrupt".into(),
            detail: format!("bad {id}"),
        };
        let m = all_damaged_message(Path::new("/r"), &[d(9), d(8)]);
        assert!(
            m.contains("checkpoint 9: corrupt: bad 9; checkpoint 8"),
            "{m}"
        );
        let many: Vec<Damage> = (1..=7).map(d).collect();
        assert!(all_damaged_message(Path::new("/r"), &many).contains("and 2 more"));
    }
}
