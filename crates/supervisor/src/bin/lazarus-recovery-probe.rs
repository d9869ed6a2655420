//! Test rank program for the supervisor: a tiny SPMD job with an aligned two-phase commit
//! written directly against the store (so the supervisor is testable without the Job API),
//! restoring through the agreed restore every runtime shares (`lazarus_coord::restore`).
//!
//! `lazarus-recovery-probe --steps N --every K --sleep-ms M --lines L --state-kib S`
//! Each step: every rank prints L lines `r<rank> s<step> l<j>`, updates its accumulator,
//! and all ranks allreduce. Every K steps (at the top of the iteration) rank 0 begins a
//! checkpoint, every rank writes its part and prints the part marker, rank 0 commits and
//! prints the commit marker. At the end rank 0 prints `checksum=<hex>`, which does not
//! depend on how often the job was killed and restarted.
use lazarus_coord::restore::{AgreeError, Candidate, LoadError, RestoreAgreement};
use lazarus_coord::OnAllDamaged;
use lazarus_format::{CheckpointId, DType, LoadedObject, ObjectInfo, ObjectKind, ObjectSpec, Rank};
use lazarus_net::ReduceOp;
use lazarus_store::{CommitMeta, PartReceipt, PartWriter, RepoOptions, RepoReader, Repository};
use lazarus_supervisor::Marker;
use std::error::Error;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

struct Args {
    steps: u64,
    every: u64,
    sleep_ms: u64,
    lines: u64,
    state_kib: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        steps: 20,
        every: 5,
        sleep_ms: 5,
        lines: 1,
        state_kib: 4,
    };
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let v: u64 = it
            .next()
            .ok_or(format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--steps" => a.steps = v,
            "--every" => a.every = v.max(1),
            "--sleep-ms" => a.sleep_ms = v,
            "--lines" => a.lines = v,
            "--state-kib" => a.state_kib = v,
            o => return Err(format!("unknown flag {o}")),
        }
    }
    Ok(a)
}

fn say(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

fn state_bytes(step: u64, acc: u64, kib: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + kib as usize * 1024);
    v.extend_from_slice(&step.to_le_bytes());
    v.extend_from_slice(&acc.to_le_bytes());
    // Filler derived from the state, so every checkpoint writes new chunks.
    let mut x = acc ^ 0x9e37_79b9_7f4a_7c15;
    while v.len() < 16 + kib as usize * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn run() -> Result<(), Box<dyn Error>> {
    let a = parse()?;
    let comm = lazarus_net::init()?;
    let rank = comm.rank();
    let repo = PathBuf::from(std::env::var("LAZARUS_REPO")?);
    let opts = RepoOptions {
        job_token: std::env::var("LAZARUS_JOB_TOKEN").ok(),
        ..RepoOptions::default()
    };
    let mut writer = if rank.0 == 0 {
        Some(Repository::open_shared(&repo, opts.clone())?)
    } else {
        None
    };
    // The agreed restore every runtime uses (lazarus_coord::restore): rank 0 lists the
    // committed checkpoints that pass the cheap check; every rank loads (and so verifies)
    // its own part; all fall back together past damage.
    let agreement = RestoreAgreement {
        comm: &comm,
        repo: &repo,
        on_all_damaged: OnAllDamaged::from_env()?.unwrap_or_default(),
    };
    let reader = RepoReader::open(&repo)?;
    let load = |c: &Candidate| {
        reader
            .load_part(c.id, rank)
            .map_err(|e| LoadError::from_store(c.id, e, |e| e.to_string()))
    };
    let apply = |chosen: Option<(&Candidate, Vec<LoadedObject>)>| -> Result<_, String> {
        let Some((c, objs)) = chosen else {
            return Ok((0, 0, None));
        };
        let d = &objs.first().ok_or("empty part")?.data;
        let g = |i: usize| -> Result<u64, String> {
            let b: [u8; 8] = d
                .get(i..i + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or("short state")?;
            Ok(u64::from_le_bytes(b))
        };
        Ok((g(0)?, g(8)?, Some(c.id)))
    };
    let ((mut step, mut acc, restored), _) = agreement.run(load, apply).map_err(|e| match e {
        AgreeError::Own(e) => e,
        other => format!("{other:?}"),
    })?;
    lazarus_coord::marker::write_marker(&Marker::Resumed {
        id: restored,
        step,
        seq: None,
    });
    let restored_step = restored.map(|_| step);
    while step < a.steps {
        if step > 0 && step % a.every == 0 && restored_step != Some(step) {
            let mut id = 0u64;
            let mut pending = None;
            if let Some(w) = writer.as_mut() {
                let p = w.begin(comm.size())?;
                id = p.id().0;
                pending = Some(p);
            }
            comm.broadcast(Rank(0), &mut id)?;
            let bytes = state_bytes(step, acc, a.state_kib);
            let obj = ObjectSpec {
                info: ObjectInfo {
                    name: "state".into(),
                    type_name: "probe".into(),
                    kind: ObjectKind::Bulk {
                        dtype: DType::U8,
                        len: bytes.len() as u64,
                        global: None,
                    },
                    sharing: Some(lazarus_format::Sharing::Rank),
                    layout: None,
                },
                data: bytes.as_slice().into(),
                hint: None,
            };
            let receipt =
                PartWriter::open(&repo, CheckpointId(id), opts.clone())?.write(rank, &[obj])?;
            lazarus_coord::marker::write_marker(&Marker::Part {
                id: CheckpointId(id),
                step,
            });
            let all: Option<Vec<PartReceipt>> = comm.gather(Rank(0), &receipt)?;
            if let (Some(w), Some(p), Some(all)) = (writer.as_mut(), pending, all) {
                let meta = CommitMeta {
                    step,
                    ..CommitMeta::default()
                };
                w.commit(p, all, meta)?;
                lazarus_coord::marker::write_marker(&Marker::Commit {
                    id: CheckpointId(id),
                    step,
                });
                w.retain(3)?;
            }
        }
        for j in 0..a.lines {
            say(&format!("r{} s{step} l{j}", rank.0));
        }
        acc = (acc.wrapping_mul(31) + rank.0 as u64 + step) % 1_000_000_007;
        let mut x = [acc % 1000];
        comm.allreduce(&mut x, ReduceOp::Sum)?;
        acc = (acc + x[0]) % 1_000_000_007;
        step += 1;
        std::thread::sleep(Duration::from_millis(a.sleep_ms));
    }
    let all = comm.gather(Rank(0), &acc)?;
    if let Some(all) = all {
        let sum = all.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
            (h ^ v).wrapping_mul(0x100_0000_01b3)
        });
        say(&format!("checksum={sum:016x}"));
    }
    comm.barrier()?;
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        let _ = writeln!(std::io::stderr(), "probe: error: {e}");
        std::process::exit(1);
    }
}
