//! Reading part of one object: only the chunks that overlap a byte range, each verified
//! against its digest. N -> M restore uses it so that a new rank reads only the rows it
//! gets from each old part, not the old parts whole.

use crate::backend::ObjectKey;
use crate::error::{StoreError, StoreErrorKind};
use crate::reader::RepoReader;
use lazarus_format::{ChunkDigest, LoadedObject, Manifest, ManifestObject};
use std::ops::Range;

/// One chunk to read: its digest and raw length, where the wanted bytes start inside it,
/// and the window of the output they go to.
struct Job<'a> {
    digest: ChunkDigest,
    len: u64,
    skip: usize,
    out: &'a mut [u8],
}

impl RepoReader {
    /// Bytes `range` of object `name` of `manifest` (from [`RepoReader::manifest`], which
    /// checks it against COMMIT), reading only the chunks that overlap the range. Every
    /// chunk read is verified against its digest, as in [`RepoReader::load_part`].
    ///
    /// Errors: `InvalidArgument` when the part has no such object or the range is not
    /// inside it; `Corrupt` when the chunk lengths do not add up to the object's size;
    /// chunk errors (`Missing`, `Corrupt`, `Io`) name the chunk file.
    pub fn read_object_range(
        &self,
        manifest: &Manifest,
        name: &str,
        range: Range<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        let n = range
            .end
            .checked_sub(range.start)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::InvalidArgument,
                    None,
                    format!(
                        "checkpoint {} {}: bytes {range:?} of {name:?} are not a range that \
                         fits in memory",
                        manifest.checkpoint, manifest.rank
                    ),
                )
            })?;
        // The length comes from the manifest: a checksum-valid manifest may still name an
        // object no memory holds (found in review: `vec!` aborted the process).
        let mut data = Vec::new();
        if data.try_reserve_exact(n).is_err() {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&self.manifest_location(manifest.checkpoint, manifest.rank)),
                format!(
                    "checkpoint {} {}: bytes {range:?} of {name:?} cannot be allocated",
                    manifest.checkpoint, manifest.rank
                ),
            ));
        }
        data.resize(n, 0);
        self.read_object_range_into(manifest, name, range.start, &mut data)?;
        Ok(data)
    }

    /// [`RepoReader::read_object_range`] into `out`: bytes `offset..offset + out.len()`.
    /// Writing straight into the caller's buffer saves an allocation and a copy per range
    /// (first-touching fresh memory is a large part of restore time on a loaded host).
    pub fn read_object_range_into(
        &self,
        manifest: &Manifest,
        name: &str,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), StoreError> {
        let ctx = format!("checkpoint {} {}", manifest.checkpoint, manifest.rank);
        let o = find(manifest, name, &ctx)?;
        let range = offset..offset.saturating_add(out.len() as u64);
        if range.end > o.bytes || range.end - range.start != out.len() as u64 {
            return Err(StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                format!(
                    "{ctx}: bytes {range:?} of object {name:?} are outside its {} bytes",
                    o.bytes
                ),
            ));
        }
        // Checked: a hand-built manifest (public fields) must not wrap the offsets below.
        let total = o
            .chunks
            .iter()
            .try_fold(0u64, |acc, c| acc.checked_add(c.len));
        if total != Some(o.bytes) {
            return Err(StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&self.manifest_location(manifest.checkpoint, manifest.rank)),
                format!(
                    "{ctx}: object {name:?} chunk lengths do not add up to its {} bytes",
                    o.bytes
                ),
            ));
        }
        let mut jobs = Vec::new();
        let mut rest: &mut [u8] = out;
        let mut at = 0u64;
        for c in &o.chunks {
            let (cs, ce) = (at, at + c.len);
            at = ce;
            if ce <= range.start || cs >= range.end {
                continue;
            }
            let a = cs.max(range.start);
            let b = ce.min(range.end);
            // In bounds: a..b lies inside range, whose length is rest's total length.
            let (w, tail) = std::mem::take(&mut rest).split_at_mut((b - a) as usize);
            rest = tail;
            jobs.push(Job {
                digest: c.digest,
                len: c.len,
                skip: (a - cs) as usize,
                out: w,
            });
        }
        self.run_jobs(jobs, &ctx)
    }

    /// The whole object `name` of `manifest`, verified chunk by chunk.
    pub fn load_object(&self, manifest: &Manifest, name: &str) -> Result<LoadedObject, StoreError> {
        let ctx = format!("checkpoint {} {}", manifest.checkpoint, manifest.rank);
        let o = find(manifest, name, &ctx)?;
        let data = self.read_object_range(manifest, name, 0..o.bytes)?;
        Ok(LoadedObject {
            info: o.info.clone(),
            data,
        })
    }

    /// Reads the chunks on two threads (as `load_part` does): verification (BLAKE3) and
    /// decompression are CPU-bound, reads of a cold cache are I/O-bound.
    fn run_jobs(&self, jobs: Vec<Job<'_>>, ctx: &str) -> Result<(), StoreError> {
        let threads = self.backend().read_concurrency();
        crate::par::try_for_each(jobs, threads, |job| self.run_job(job)).map_err(|e| e.context(ctx))
    }

    fn run_job(&self, job: Job<'_>) -> Result<(), StoreError> {
        if job.skip == 0 && job.out.len() as u64 == job.len {
            return self.read_chunk_into(&job.digest, job.out);
        }
        let at = self.backend().describe(&ObjectKey::Chunk(job.digest));
        let len = usize::try_from(job.len).map_err(|_| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&at),
                format!("chunk {}: length {} does not fit", job.digest, job.len),
            )
        })?;
        let mut buf = vec![0u8; len];
        self.read_chunk_into(&job.digest, &mut buf)?;
        let src = buf.get(job.skip..job.skip + job.out.len()).ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Corrupt,
                Some(&at),
                format!("chunk {}: shorter than its manifest entry", job.digest),
            )
        })?;
        job.out.copy_from_slice(src);
        Ok(())
    }
}

fn find<'m>(m: &'m Manifest, name: &str, ctx: &str) -> Result<&'m ManifestObject, StoreError> {
    m.objects
        .iter()
        .find(|o| o.info.name == name)
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::InvalidArgument,
                None,
                format!("{ctx}: the part has no object {name:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use crate::{CommitMeta, RepoOptions, Repository};
    use lazarus_format::{ObjectInfo, ObjectKind, ObjectSpec, Rank};
    use std::borrow::Cow;

    #[test]
    fn every_range_equals_the_slice_of_the_whole_object() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RepoOptions {
            chunk_size: crate::MIN_CHUNK_SIZE,
            ..RepoOptions::default()
        };
        let chunk = crate::MIN_CHUNK_SIZE as usize;
        let mut repo = Repository::open(dir.path(), opts).unwrap();
        let bytes: Vec<u8> = (0..chunk * 3 + 123).map(|i| (i * 7 % 251) as u8).collect();
        let pending = repo.begin(1).unwrap();
        let w = pending.part_writer();
        let spec = ObjectSpec {
            info: ObjectInfo {
                name: "x".into(),
                type_name: "Vec<u8>".into(),
                kind: ObjectKind::Bulk {
                    dtype: lazarus_format::DType::U8,
                    len: bytes.len() as u64,
                    global: None,
                },
                sharing: None,
                layout: None,
            },
            data: Cow::Borrowed(&bytes),
            hint: None,
        };
        let receipt = w.write(Rank(0), &[spec]).unwrap();
        let id = pending.id();
        repo.commit(pending, vec![receipt], CommitMeta::default())
            .unwrap();
        let r = repo.reader().unwrap();
        let m = r.manifest(id, Rank(0)).unwrap();
        let n = bytes.len() as u64;
        let c = chunk as u64;
        for (a, b) in [
            (0, n),
            (0, 0),
            (1, 2),
            (c - 1, c + 1),
            (c, 2 * c),
            (5, n - 5),
            (2 * c + 10, n),
        ] {
            let got = r.read_object_range(&m, "x", a..b).unwrap();
            assert_eq!(got, bytes[a as usize..b as usize], "{a}..{b}");
        }
        assert_eq!(r.load_object(&m, "x").unwrap().data, bytes);
        assert!(r.read_object_range(&m, "x", 0..n + 1).is_err());
        assert!(r.read_object_range(&m, "y", 0..1).is_err());
        // A damaged chunk is found only when the range touches it.
        let last = &m.objects[0].chunks[3].digest;
        let p = dir
            .path()
            .join("chunks")
            .join(&last.to_string()[..2])
            .join(last.to_string());
        let mut f = std::fs::read(&p).unwrap();
        let k = f.len() - 1;
        f[k] ^= 1;
        std::fs::write(&p, f).unwrap();
        assert!(r.read_object_range(&m, "x", 0..3 * c).is_ok());
        let e = r.read_object_range(&m, "x", 3 * c..n).unwrap_err();
        assert_eq!(e.kind(), crate::StoreErrorKind::Corrupt, "{e}");
        assert!(
            e.to_string().contains(&last.to_string()),
            "names the chunk: {e}"
        );
        // Found in review: a manifest naming an object no memory can hold aborted the
        // process (`vec!`); it is a Corrupt error naming the manifest.
        let mut huge = m.clone();
        huge.objects[0].bytes = 1 << 52;
        let e = r.load_object(&huge, "x").unwrap_err();
        assert_eq!(e.kind(), crate::StoreErrorKind::Corrupt, "{e}");
        assert!(
            e.to_string().contains("rank-0.manifest") || e.to_string().contains("COMMIT"),
            "{e}"
        );
        // Chunks that do not add up name the manifest too.
        let mut short = m.clone();
        short.objects[0].bytes += 1;
        let e = r.load_object(&short, "x").unwrap_err();
        assert!(e.to_string().contains("do not add up"), "{e}");
        assert!(e.path().is_some(), "{e}");
    }
}
