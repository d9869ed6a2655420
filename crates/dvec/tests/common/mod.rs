//! Helpers shared by the DVec tests that checkpoint into a real repository: in-process
//! ranks whose state outlives one collective phase, and checkpoint rounds that verify
//! every manifest against digests computed from the bytes.

#![allow(dead_code)] // each test file uses part of this

use lazarus_dist::Reshard;
use lazarus_format::{CheckpointId, ChunkDigest, LoadedObject, Rank};
use lazarus_net::{local_comms, Comm};
use lazarus_state::Checkpoint;
use lazarus_store::{CommitMeta, PartReceipt, RepoOptions, RepoReader, Repository};
use std::path::Path;
use std::sync::Mutex;

/// `n` in-process ranks (real communicators), each with its own state that persists
/// across calls of [`Ranks::each`].
pub struct Ranks<S> {
    ranks: Vec<Mutex<(Comm, S)>>,
}

impl<S: Send> Ranks<S> {
    /// Builds every rank's state on its own thread (constructors may be collective).
    pub fn new(n: u32, init: impl Fn(&Comm) -> S + Sync) -> Self {
        let comms = local_comms(n).expect("in-process ranks");
        let states: Vec<S> = std::thread::scope(|s| {
            let hs: Vec<_> = comms.iter().map(|c| s.spawn(|| init(c))).collect();
            hs.into_iter()
                .map(|h| h.join().expect("rank thread"))
                .collect()
        });
        Ranks {
            ranks: comms.into_iter().zip(states).map(Mutex::new).collect(),
        }
    }

    /// Number of ranks.
    pub fn len(&self) -> u32 {
        self.ranks.len() as u32
    }

    /// Runs `f(comm, state)` on every rank at once (one thread each); results in rank order.
    pub fn each<R: Send>(&self, f: impl Fn(&Comm, &mut S) -> R + Sync) -> Vec<R> {
        std::thread::scope(|s| {
            let hs: Vec<_> = self
                .ranks
                .iter()
                .map(|m| {
                    let f = &f;
                    s.spawn(move || {
                        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                        let (c, st) = &mut *g;
                        f(c, st)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("rank thread"))
                .collect()
        })
    }
}

/// How a checkpoint round ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// Every rank writes, the checkpoint commits; manifests are verified.
    Commit,
    /// Every rank writes durably, then the round is aborted (2PC abort after the vote).
    AbortAfterWrite,
    /// Every rank saves (takes its snapshot) but nothing is written.
    NeverWritten,
    /// Every rank's write fails (full disk).
    FailedWrite,
}

/// Digests of every chunk of every object, from the bytes.
fn digests_of(objects: &[lazarus_format::ObjectSpec<'_>], chunk: usize) -> Vec<Vec<ChunkDigest>> {
    objects
        .iter()
        .map(|o| o.data.chunks(chunk).map(ChunkDigest::of).collect())
        .collect()
}

/// One checkpoint round of all ranks into `repo` (chunk size `chunk`). On commit, every
/// rank's manifest must list exactly the digests of the bytes it saved: a change the page
/// tracking missed shows up as a stale digest. Returns the id and the receipts.
pub fn round<S: Checkpoint + Send>(
    repo: &mut Repository,
    ranks: &Ranks<S>,
    how: Round,
    chunk: usize,
) -> Option<(CheckpointId, Vec<PartReceipt>)> {
    let p = repo.begin(ranks.len()).expect("begin");
    let w = p.part_writer();
    match how {
        Round::NeverWritten => {
            ranks.each(|_, s| drop(lazarus_state::save(s).expect("save")));
            repo.abort(p).expect("abort");
            None
        }
        Round::FailedWrite => {
            ranks.each(|c, s| {
                let objs = lazarus_state::save(s).expect("save");
                let r = w.clone().with_write_budget(10).write(c.rank(), &objs);
                assert!(r.is_err(), "a write with a 10-byte budget succeeded");
            });
            repo.abort(p).expect("abort");
            None
        }
        Round::AbortAfterWrite => {
            ranks.each(|c, s| {
                let objs = lazarus_state::save(s).expect("save");
                w.write(c.rank(), &objs).expect("write");
            });
            repo.abort(p).expect("abort");
            None
        }
        Round::Commit => {
            let out = ranks.each(|c, s| {
                let objs = lazarus_state::save(s).expect("save");
                let r = w.write(c.rank(), &objs).expect("write");
                (r, digests_of(&objs, chunk))
            });
            let (receipts, want): (Vec<_>, Vec<_>) = out.into_iter().unzip();
            let id = repo
                .commit(p, receipts.clone(), CommitMeta::default())
                .expect("commit")
                .summary
                .id;
            let reader = RepoReader::open(repo.path()).expect("reader");
            for (r, want) in want.iter().enumerate() {
                let m = reader.manifest(id, Rank(r as u32)).expect("manifest");
                let got: Vec<Vec<ChunkDigest>> = m
                    .objects
                    .iter()
                    .map(|o| o.chunks.iter().map(|c| c.digest).collect())
                    .collect();
                assert_eq!(
                    &got, want,
                    "rank {r}: manifest digests differ from the bytes"
                );
            }
            Some((id, receipts))
        }
    }
}

pub fn repo(dir: &Path, chunk: u32) -> Repository {
    Repository::open(
        dir,
        RepoOptions {
            chunk_size: chunk,
            ..RepoOptions::default()
        },
    )
    .expect("open repository")
}

#[derive(Debug, thiserror::Error)]
#[error("object {0} missing from rank {1}'s part")]
pub struct Missing(String, u32);

/// Restores checkpoint `id` of `repo` onto `m` fresh ranks whose state `init` builds:
/// by redistribution ([`Reshard`]) when `m` differs from the writers' count, else each
/// rank its own part.
pub fn restore_on<S: Checkpoint + Send>(
    repo: &Path,
    id: CheckpointId,
    m: u32,
    init: impl Fn(&Comm) -> S + Sync,
) -> Ranks<S> {
    let reader = RepoReader::open(repo).expect("reader");
    let manifests = reader.manifests(id).expect("manifests");
    let parts: Vec<Vec<LoadedObject>> = (0..manifests.len() as u32)
        .map(|r| reader.load_part(id, Rank(r)).expect("load part"))
        .collect();
    let infos: Vec<Vec<_>> = manifests
        .iter()
        .map(|m| m.objects.iter().map(|o| o.info.clone()).collect())
        .collect();
    let same_size = manifests.len() == m as usize;
    // As the Job API does: a same-size restore is no redistribution, so per-rank fields
    // are allowed; only another size asks the planner.
    let plan = (!same_size).then(|| Reshard::new(&infos, m).expect("reshard plan"));
    let ranks = Ranks::new(m, init);
    ranks.each(|c, s| {
        if same_size {
            // As the Job API does: every rank adopts its own saved block.
            let objs = parts[c.rank().index()].clone();
            lazarus_state::restore(s, objs).expect("restore");
            return;
        }
        let mut fetch = |r: Rank, name: &str| {
            parts[r.index()]
                .iter()
                .find(|o| o.info.name == name)
                .cloned()
                .ok_or_else(|| Missing(name.to_string(), r.0))
        };
        let plan = plan.as_ref().expect("planned for another size");
        let objs = plan.assemble(c.rank(), &mut fetch).expect("assemble");
        lazarus_state::restore(s, objs).expect("restore");
    });
    ranks
}
