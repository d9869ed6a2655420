//! Multi-level checkpoints (issue #15, docs/LEVELS.md): cheap frequent copies on fast
//! levels, rare ones on the durable repository.
//!
//! - **L1 node-local**: each rank's part in a repository of its own under a per-host
//!   directory (`/dev/shm/lazarus-<job>/<host>/rank-<r>/` by default). Survives a process
//!   crash, not the loss of the host.
//! - **L2 partner copy**: the same checkpoint mirrored, chunk for chunk, into
//!   `<host'>/partner-of-<r>/` on the host of a partner rank; only the chunks the mirror
//!   lacks cross the network. Survives the loss of one host (of any one host, when every
//!   partner is on another host).
//! - **L3 parity**: groups of k ranks on distinct hosts ([`l3`]); two Reed-Solomon
//!   parity shards over the members' L1 checkpoints ([`parity`]), each kept on a member's
//!   host in `<host>/parity-<g>-<j>/`. Survives the loss of any one host without L2.
//! - **L4 durable**: the job's repository, written by the two-phase commit as without
//!   levels (crate `lazarus-coord`).
//! - **N→M** ([`PiecesMsg`], crate-private `nm`): a checkpoint held only on L1/L2 is
//!   restored on another number of ranks; the holders of the old parts send each new
//!   rank the pieces `lazarus_dist::Reshard` reads for it, over the communicator.
//!
//! Every level is an ordinary repository of docs/FORMAT.md written by the store's own
//! code (`Repository`, `PartWriter`, backend `put`), so a level's copy is complete or
//! absent (COMMIT is written last) and `lazarus verify` / `inspect` read it like any
//! other. A level checkpoint is a one-rank checkpoint of its own repository; the
//! job-wide checkpoint number (`lazarus.level.seq`), the global rank and the world size
//! are in its COMMIT, so [`plan`] can tell which copies form a complete global
//! checkpoint. Which levels a checkpoint goes to is [`Levels::due`].
#![deny(missing_docs)]
// A failed stdout/stderr must never panic a job (issue #11 item 10): no print macros.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

mod audit;
mod bulk;
mod config;
mod error;
mod exchange;
pub mod history;
pub mod l3;
mod nm;
mod node;
pub mod parity;
mod partner;
pub mod plan;
pub mod slots;

pub use audit::{audit_parity, ParityAudit};
pub use config::{
    default_root, ensure_private_root, host_identity, Due, LevelClock, Levels, Period,
    FAST_CODEC_ENV, HOST_ENV, L1_DIR_ENV, L1_EVERY_ENV, L2_EVERY_ENV, L3_EVERY_ENV, L3_GROUP_ENV,
    L3_SHARDS_ENV, L4_EVERY_ENV, SIM_HOSTS_ENV,
};
pub use error::LevelError;
pub use history::{History, LINEAGE_KEY};
pub use nm::{Piece, PiecesMsg};
pub use node::{
    parity_record_problem, scan, scan_parity, L1Capture, LevelReceipt, LoadOutcome, NodeLevels,
    COMPLETE_KEY, LEVEL_RANK_KEY, LEVEL_WORLD_KEY, PARITY_HASHES_KEY, PARITY_HOSTS_KEY,
    PARITY_LENS_KEY, PARITY_LOCALS_KEY, PARITY_MEMBERS_KEY, PARITY_M_KEY, PARITY_SHARD_BYTES_KEY,
    PARITY_SHARD_KEY, SEQ_KEY,
};
#[doc(hidden)]
pub use partner::fuzz_copy_msg;
pub use partner::{partner_map, CopyMsg};
pub use plan::{FastPlan, Held, MemberSource, ParityHeld, ParitySource, RankSource, ShardSource};

// Every level tag is private (docs/LEVELS.md): a level round runs on the Job's background
// thread while the program receives with wildcards on the same communicator.
const _: () = {
    let private = lazarus_net::Tag::CHECKPOINT_PRIVATE;
    let tags = [
        partner::TAG_COPY,
        partner::TAG_REBUILD,
        l3::TAG_PARITY,
        l3::TAG_PARITY_REBUILD,
        exchange::TAG_OUTCOME,
        exchange::TAG_BASES,
        nm::TAG_PIECES,
    ];
    let mut i = 0;
    while i < tags.len() {
        assert!(private.start <= tags[i] && tags[i] < private.end);
        i += 1;
    }
};
