//! Whether a parity shard still agrees with its members' node-local copies (`lazarus
//! verify --level l3`): re-encoding the shard from the members' L1 checkpoints it was
//! computed over, laid out by the headers stored next to it, and comparing. A verified
//! repository proves the shard is the bytes that were written; this proves they are the
//! parity of the members' checkpoints, so a wrong encode or incremental update shows up
//! before a rebuild needs it (where it is caught too, but as damage, too late).

use crate::node::{dir_of, read_shard, recorded_headers};
use crate::parity;
use crate::plan::ParityHeld;
use crate::PARITY_HOSTS_KEY;
use lazarus_format::ChunkDigest;
use lazarus_store::{ObjectKey, RepoReader};
use std::path::Path;

/// What re-encoding one parity shard found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParityAudit {
    /// The shard equals the parity of its members' L1 copies.
    Agrees,
    /// It does not, or the shard itself cannot be read: the reason, naming the file.
    Differs(String),
    /// A member's L1 copy is gone or unreadable (a lost host, retention, damage that
    /// `verify --level l1` names): nothing to compare with.
    Unchecked(String),
}

/// Re-encodes shard `p` (from [`crate::scan_parity`] of `root`) from its members' L1
/// copies under `root` (on the hosts its COMMIT records) and compares it with the stored
/// shard. Holds the group's k regions and the m shards in memory. A member's chunks are
/// found by digest, so they may come from a newer L1 checkpoint sharing them: the
/// verdict is about the bytes the stored headers name.
pub fn audit_parity(root: &Path, p: &ParityHeld) -> ParityAudit {
    let shard_dir = root.join(&p.host).join(&p.dir);
    let (shard, raw) = match read_shard(&shard_dir, p.local) {
        Ok(x) => x,
        Err(e) => return ParityAudit::Differs(e),
    };
    // Sizes from the records are checked against the shard read before anything is
    // allocated by them (as the rebuild does).
    if shard.len() as u64 != p.shard_bytes {
        return ParityAudit::Differs(format!(
            "{}: a shard of {} bytes, its COMMIT says {}",
            shard_dir.display(),
            shard.len(),
            p.shard_bytes
        ));
    }
    let headers = match recorded_headers(&raw, &p.hashes, &p.lens) {
        Ok(h) => h,
        Err(e) => return ParityAudit::Differs(format!("{}: {e}", shard_dir.display())),
    };
    if let Some((i, h)) = headers
        .iter()
        .enumerate()
        .find(|(_, h)| h.region_len > p.shard_bytes)
    {
        return ParityAudit::Differs(format!(
            "{}: member {i}'s region of {} bytes exceeds the shard",
            shard_dir.display(),
            h.region_len
        ));
    }
    // Parity written before the members' hosts were recorded cannot be placed.
    let hosts: Vec<&str> = p
        .app
        .get(PARITY_HOSTS_KEY)
        .map(|h| h.split(',').collect())
        .unwrap_or_default();
    let mut regions = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        let (Some(member), Some(host)) = (p.members.get(i), hosts.get(i)) else {
            return ParityAudit::Unchecked(format!(
                "{}: no host recorded for member {i}",
                shard_dir.display()
            ));
        };
        // A host name is one directory under the root, nothing else.
        if !crate::config::is_host_dir_name(host) {
            return ParityAudit::Differs(format!(
                "{}: member {i}'s recorded host {host:?} is not a host directory name",
                shard_dir.display()
            ));
        }
        let l1 = root.join(host).join(dir_of(*member, true));
        let region = RepoReader::open(&l1)
            .map_err(|e| e.to_string())
            .and_then(|r| h.region(|d| r.backend().read(&ObjectKey::Chunk(ChunkDigest(*d))).ok()));
        match region {
            Ok(r) => regions.push(r),
            Err(e) => {
                return ParityAudit::Unchecked(format!(
                    "rank {member}'s L1 copy of its checkpoint {} ({}): {e}",
                    h.local,
                    l1.display()
                ))
            }
        }
    }
    let refs: Vec<&[u8]> = regions.iter().map(Vec::as_slice).collect();
    let encoded = usize::try_from(p.shard_bytes)
        .map_err(|e| e.to_string())
        .and_then(|n| {
            parity::encode_shard(&refs, p.m as usize, n, p.shard as usize)
                .map_err(|e| e.to_string())
        });
    match encoded {
        Ok(e) if e == shard => ParityAudit::Agrees,
        Ok(_) => ParityAudit::Differs(format!(
            "{}: shard {} of checkpoint {} is not the parity of its {} members' L1 copies",
            shard_dir.display(),
            p.shard,
            p.seq,
            p.members.len()
        )),
        Err(e) => ParityAudit::Differs(format!("{}: re-encoding: {e}", shard_dir.display())),
    }
}
