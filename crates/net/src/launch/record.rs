//! What a rank's shim tells the launcher through a cluster launcher's output forwarding,
//! and how it is put back together.
//!
//! Launchers forward a rank's stdout in chunks they choose: Open MPI's `--tag-output`
//! prefixes every chunk (and every line) with `[job,rank]<stdout>:` and cuts long or fast
//! output anywhere, even mid-line, so chunks of different ranks interleave; with many short
//! lines per chunk it even drops data (its tagged buffer overflows: measured, 926 of 3000
//! short lines lost per rank). `srun --label` prefixes lines with `rank: ` and holds a
//! partial line until its newline. So the shim never forwards the program's bytes as they
//! are: it writes *records*, `<kind><payload>$`, whose payload alphabet (decimal digits or
//! base64) has none of `$ [ : \n` or space. The receiver splits the launcher's stream by
//! its rank tags, drops every newline (the launcher's or ours), and cuts records at `$`:
//! whatever the launcher did to chunk boundaries, every rank's records come back whole and
//! in order. Program lines longer than [`MAX_PIECE`] travel as several records.
//!
//! Kinds: `H` host (base64), `P` pid, `T` Slurm step (`job.step`), `O`/`E` the end of a
//! stdout/stderr line (base64, with its newline unless the program's stream ended inside
//! the line), `C`/`D` a piece of a longer stdout/stderr line, `K` an injected kill fired,
//! `X` exit status, `S` terminating signal.

use lazarus_format::base64;
use std::collections::BTreeMap;

/// Longest piece of a program line in one record (bytes before base64).
pub(crate) const MAX_PIECE: usize = 32 << 10;
/// Longest record accepted (base64 of [`MAX_PIECE`] plus slack); longer is garbage.
const MAX_RECORD: usize = 64 << 10;
/// Record terminator.
const END: u8 = b'$';

/// One event from a rank's shim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// The host the rank runs on, as the launcher names it.
    Host(String),
    /// The program's pid on its host.
    Pid(u32),
    /// Slurm job step (`<job>.<step>`), for `scancel`.
    Step(String),
    /// Bytes of a stdout line; `end`: the line's last piece (the bytes end with its
    /// newline, unless the program's stream ended inside the line).
    Out { bytes: Vec<u8>, end: bool },
    /// Bytes of a stderr line, like `Out`.
    Err { bytes: Vec<u8>, end: bool },
    /// A kill injected by the launcher's fault plan fired (the shim SIGKILLed the program).
    Injected,
    /// The program exited with this status.
    Exited(i32),
    /// The program was killed by this signal.
    Signaled(i32),
}

/// Appends the encoding of `r` to `out`.
pub(crate) fn encode(r: &Record, out: &mut Vec<u8>) {
    let (kind, payload) = match r {
        Record::Host(h) => (b'H', base64::encode(h.as_bytes())),
        Record::Pid(p) => (b'P', p.to_string()),
        Record::Step(s) => (b'T', base64::encode(s.as_bytes())),
        Record::Out { bytes, end } => (if *end { b'O' } else { b'C' }, base64::encode(bytes)),
        Record::Err { bytes, end } => (if *end { b'E' } else { b'D' }, base64::encode(bytes)),
        Record::Injected => (b'K', String::new()),
        Record::Exited(c) => (b'X', c.to_string()),
        Record::Signaled(s) => (b'S', s.to_string()),
    };
    out.push(kind);
    out.extend_from_slice(payload.as_bytes());
    out.push(END);
}

/// The records for one line of program output (split into pieces of at most [`MAX_PIECE`]).
pub(crate) fn line_records(line: &[u8], stderr: bool) -> Vec<Record> {
    let n = line.len().div_ceil(MAX_PIECE).max(1);
    (0..n)
        .map(|i| {
            let bytes = line
                .get(i * MAX_PIECE..((i + 1) * MAX_PIECE).min(line.len()))
                .unwrap_or_default()
                .to_vec();
            let end = i + 1 == n;
            if stderr {
                Record::Err { bytes, end }
            } else {
                Record::Out { bytes, end }
            }
        })
        .collect()
}

fn decode_one(tok: &[u8]) -> Result<Record, String> {
    let (&kind, rest) = tok.split_first().ok_or("empty record")?;
    let text = std::str::from_utf8(rest).map_err(|_| "record is not ASCII".to_string())?;
    let num = || {
        text.parse::<i64>()
            .map_err(|_| format!("record {:?}: bad number", kind as char))
    };
    let b64 =
        || base64::decode(text).ok_or_else(|| format!("record {:?}: bad base64", kind as char));
    let utf8 = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Ok(match kind {
        b'H' => Record::Host(utf8(b64()?)),
        b'P' => Record::Pid(u32::try_from(num()?).map_err(|_| "pid out of range")?),
        b'T' => Record::Step(utf8(b64()?)),
        b'O' | b'C' => Record::Out {
            bytes: b64()?,
            end: kind == b'O',
        },
        b'E' | b'D' => Record::Err {
            bytes: b64()?,
            end: kind == b'E',
        },
        b'K' if text.is_empty() => Record::Injected,
        // What a process can really end with: an exit status is 0..=255, a signal 1..=127.
        // Anything else is garbage; taken as it was, `X-1` made a failed job's exit code
        // negative, which `lazarus run` clamps to 0: reported as success.
        b'X' => Record::Exited(
            i32::try_from(num()?)
                .ok()
                .filter(|c| (0..=255).contains(c))
                .ok_or("exit status out of range")?,
        ),
        b'S' => Record::Signaled(
            i32::try_from(num()?)
                .ok()
                .filter(|s| (1..=127).contains(s))
                .ok_or("signal out of range")?,
        ),
        k => return Err(format!("unknown record kind {:?}", k as char)),
    })
}

/// Reassembles one rank's records from the bytes the launcher forwarded for it.
///
/// Guarantees: newlines anywhere are ignored; a record is returned once its `$` arrived;
/// a malformed record (or one longer than the limit) is skipped and counted, never fatal.
#[derive(Debug, Default)]
pub(crate) struct RecordParser {
    buf: Vec<u8>,
    overflow: bool,
    /// Malformed records seen (skipped).
    pub(crate) bad: u64,
    /// The last malformed record's error.
    pub(crate) last_error: Option<String>,
}

impl RecordParser {
    /// Feeds bytes; complete records are appended to `out`.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<Record>) {
        for &b in bytes {
            match b {
                b'\n' | b'\r' => {}
                END => {
                    if self.overflow {
                        self.fail("record longer than the limit".into());
                    } else if !self.buf.is_empty() {
                        match decode_one(&self.buf) {
                            Ok(r) => out.push(r),
                            Err(e) => self.fail(e),
                        }
                    }
                    self.buf.clear();
                    self.overflow = false;
                }
                _ if self.buf.len() >= MAX_RECORD => self.overflow = true,
                _ => self.buf.push(b),
            }
        }
    }

    fn fail(&mut self, e: String) {
        self.bad += 1;
        self.last_error = Some(e);
    }

    /// Bytes of an unterminated record left at the end of the stream.
    pub(crate) fn leftover(&self) -> usize {
        self.buf.len()
    }
}

/// How a launcher marks which rank a chunk of output belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tagging {
    /// One stream per rank (ssh): everything is this rank's.
    Fixed(u32),
    /// Open MPI `--tag-output`: `[job,rank]<stdout>:` before every chunk and line.
    OpenMpi,
    /// `srun --label`: `rank: ` before every line (srun ends a partial line itself).
    SlurmLabel,
}

/// What a launcher's stream carries once split by rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Bytes of rank `.0`.
    Rank(u32, Vec<u8>),
    /// Bytes with no rank tag: the launcher's own output.
    Untagged(Vec<u8>),
}

/// Splits a launcher's output stream by rank tag. Works on arbitrary chunk boundaries.
#[derive(Debug)]
pub(crate) struct Demux {
    tagging: Tagging,
    /// Rank of the payload being read (Open MPI), or of the current line (Slurm).
    cur: Option<u32>,
    /// A tag (Open MPI) or a line start (Slurm) being read.
    pending: Vec<u8>,
    /// Reading a tag (Open MPI) / the label of a line (Slurm).
    in_tag: bool,
}

const MAX_TAG: usize = 64;

impl Demux {
    pub(crate) fn new(tagging: Tagging) -> Self {
        Demux {
            tagging,
            cur: None,
            pending: Vec::new(),
            in_tag: matches!(tagging, Tagging::SlurmLabel),
        }
    }

    /// Feeds bytes; appends what they carry to `out` (adjacent bytes of one rank merged).
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<Piece>) {
        match self.tagging {
            Tagging::Fixed(r) => push(out, Some(r), bytes),
            Tagging::OpenMpi => self.feed_ompi(bytes, out),
            Tagging::SlurmLabel => self.feed_slurm(bytes, out),
        }
    }

    fn feed_ompi(&mut self, bytes: &[u8], out: &mut Vec<Piece>) {
        for &b in bytes {
            if self.in_tag {
                self.pending.push(b);
                if b == b':' {
                    let tag = std::mem::take(&mut self.pending);
                    self.in_tag = false;
                    match parse_ompi_tag(&tag) {
                        Some(r) => self.cur = Some(r),
                        // Not a tag after all: text of whoever was talking.
                        None => push(out, self.cur, &tag),
                    }
                } else if self.pending.len() > MAX_TAG || b == b'\n' {
                    let tag = std::mem::take(&mut self.pending);
                    self.in_tag = false;
                    push(out, self.cur, &tag);
                }
            } else if b == b'[' {
                self.in_tag = true;
                self.pending.push(b);
            } else {
                push(out, self.cur, &[b]);
                if b == b'\n' {
                    // Open MPI tags every line start: what follows a newline untagged is
                    // its own text, not the rank's.
                    self.cur = None;
                }
            }
        }
    }

    fn feed_slurm(&mut self, bytes: &[u8], out: &mut Vec<Piece>) {
        for &b in bytes {
            if self.in_tag {
                self.pending.push(b);
                let label = parse_slurm_label(&self.pending);
                match label {
                    Label::Done(r) => {
                        self.cur = Some(r);
                        self.pending.clear();
                        self.in_tag = false;
                    }
                    Label::More => {}
                    Label::No => {
                        let text = std::mem::take(&mut self.pending);
                        self.in_tag = false;
                        self.cur = None;
                        let ends = text.last() == Some(&b'\n');
                        push(out, None, &text);
                        if ends {
                            self.in_tag = true;
                        }
                    }
                }
            } else {
                push(out, self.cur, &[b]);
                if b == b'\n' {
                    self.in_tag = true;
                    self.cur = None;
                }
            }
        }
    }

    /// At end of stream: what is still held (an unfinished tag) as the current rank's.
    pub(crate) fn finish(&mut self, out: &mut Vec<Piece>) {
        let rest = std::mem::take(&mut self.pending);
        push(out, self.cur, &rest);
    }
}

/// Fuzzing entry (fuzz target `launch_records`): the decoders of a cluster launcher's
/// output (the stdout record stream and the stderr demultiplexer, under every tagging) on
/// arbitrary bytes, fed in two pieces split where the first byte says. Returns the number
/// of records and pieces decoded; must never panic or over-allocate.
#[doc(hidden)]
pub fn fuzz_launcher_output(input: &[u8]) -> usize {
    let at = input
        .first()
        .map_or(0, |&b| usize::from(b))
        .min(input.len());
    let (a, b) = input.split_at(at);
    let mut n = 0;
    for t in [Tagging::OpenMpi, Tagging::SlurmLabel, Tagging::Fixed(0)] {
        let mut rs = RecordStream::new(t);
        n += rs.feed(a).0.len() + rs.feed(b).0.len() + rs.finish().0.len();
        n += rs.problems().len();
        let mut d = Demux::new(t);
        let mut pieces = Vec::new();
        d.feed(a, &mut pieces);
        d.feed(b, &mut pieces);
        d.finish(&mut pieces);
        n += pieces.len();
    }
    n
}

fn push(out: &mut Vec<Piece>, rank: Option<u32>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    match (out.last_mut(), rank) {
        (Some(Piece::Rank(r, v)), Some(x)) if *r == x => v.extend_from_slice(bytes),
        (Some(Piece::Untagged(v)), None) => v.extend_from_slice(bytes),
        (_, Some(x)) => out.push(Piece::Rank(x, bytes.to_vec())),
        (_, None) => out.push(Piece::Untagged(bytes.to_vec())),
    }
}

/// `[<digits>,<digits>]<name>:` -> the second number (the rank).
fn parse_ompi_tag(tag: &[u8]) -> Option<u32> {
    let inner = tag.strip_prefix(b"[")?;
    let close = inner.iter().position(|&c| c == b']')?;
    let (nums, rest) = inner.split_at(close);
    let rest = rest.strip_prefix(b"]<")?.strip_suffix(b">:")?;
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let text = std::str::from_utf8(nums).ok()?;
    let (job, rank) = text.split_once(',')?;
    if job.is_empty() || !job.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    rank.parse().ok()
}

enum Label {
    Done(u32),
    More,
    No,
}

/// Optional spaces, digits, `: ` (what `srun --label` writes at a line start).
fn parse_slurm_label(p: &[u8]) -> Label {
    let digits_from = p.iter().position(|&c| c != b' ').unwrap_or(p.len());
    let rest = &p[digits_from..];
    let nd = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let after = &rest[nd..];
    if p.len() > MAX_TAG {
        return Label::No;
    }
    match after {
        [] => Label::More,
        [b':'] if nd > 0 => Label::More,
        [b':', b' '] if nd > 0 => match std::str::from_utf8(&rest[..nd])
            .ok()
            .and_then(|s| s.parse().ok())
        {
            Some(r) => Label::Done(r),
            None => Label::No,
        },
        _ => Label::No,
    }
}

/// Per-rank record parsers behind one [`Demux`]: launcher bytes in, `(rank, record)` out,
/// plus the launcher's own (untagged) text.
#[derive(Debug)]
pub(crate) struct RecordStream {
    demux: Demux,
    parsers: BTreeMap<u32, RecordParser>,
}

impl RecordStream {
    pub(crate) fn new(tagging: Tagging) -> Self {
        RecordStream {
            demux: Demux::new(tagging),
            parsers: BTreeMap::new(),
        }
    }

    /// Feeds launcher bytes; returns the records completed and the untagged text.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> (Vec<(u32, Record)>, Vec<u8>) {
        let mut pieces = Vec::new();
        self.demux.feed(bytes, &mut pieces);
        self.route(pieces)
    }

    /// At end of stream.
    pub(crate) fn finish(&mut self) -> (Vec<(u32, Record)>, Vec<u8>) {
        let mut pieces = Vec::new();
        self.demux.finish(&mut pieces);
        self.route(pieces)
    }

    fn route(&mut self, pieces: Vec<Piece>) -> (Vec<(u32, Record)>, Vec<u8>) {
        let mut recs = Vec::new();
        let mut text = Vec::new();
        for p in pieces {
            match p {
                Piece::Rank(r, bytes) => {
                    let mut got = Vec::new();
                    self.parsers.entry(r).or_default().feed(&bytes, &mut got);
                    recs.extend(got.into_iter().map(|x| (r, x)));
                }
                Piece::Untagged(b) => text.extend_from_slice(&b),
            }
        }
        (recs, text)
    }

    /// `(rank, malformed records, last error, unterminated bytes)` of ranks with trouble.
    pub(crate) fn problems(&self) -> Vec<(u32, u64, Option<String>, usize)> {
        self.parsers
            .iter()
            .filter(|(_, p)| p.bad > 0 || p.leftover() > 0)
            .map(|(r, p)| (*r, p.bad, p.last_error.clone(), p.leftover()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn records_of(r: u32, lines: &[Vec<u8>]) -> (Vec<Record>, Vec<u8>) {
        let mut recs = vec![Record::Host(format!("h{r}")), Record::Pid(100 + r)];
        for l in lines {
            recs.extend(line_records(l, false));
        }
        recs.push(Record::Exited(0));
        let mut bytes = Vec::new();
        for x in &recs {
            encode(x, &mut bytes);
        }
        (recs, bytes)
    }

    /// What Open MPI does: cut each rank's bytes into chunks, tag every chunk (and every
    /// line start within it), interleave chunks of different ranks.
    fn ompi_stream(streams: &[Vec<u8>], cuts: &[usize], order: &[usize]) -> Vec<u8> {
        let mut chunks: Vec<Vec<(u32, Vec<u8>)>> = Vec::new();
        for (r, s) in streams.iter().enumerate() {
            let mut v = Vec::new();
            let mut at = 0;
            let mut k = 0;
            while at < s.len() {
                let len = cuts[(r + k) % cuts.len()].max(1);
                let end = (at + len).min(s.len());
                v.push((r as u32, s[at..end].to_vec()));
                at = end;
                k += 1;
            }
            chunks.push(v);
        }
        let mut out = Vec::new();
        let mut idx = vec![0usize; streams.len()];
        let mut k = 0;
        while idx.iter().zip(&chunks).any(|(i, c)| *i < c.len()) {
            let want = order[k % order.len()] % streams.len();
            k += 1;
            // The chosen rank or the next one that still has chunks.
            let Some(r) = (0..streams.len())
                .map(|i| (want + i) % streams.len())
                .find(|&r| idx[r] < chunks[r].len())
            else {
                break;
            };
            let (rank, data) = &chunks[r][idx[r]];
            idx[r] += 1;
            let tag = format!("[42,{rank}]<stdout>:");
            out.extend_from_slice(tag.as_bytes());
            for (i, &b) in data.iter().enumerate() {
                out.push(b);
                if b == b'\n' && i + 1 < data.len() {
                    out.extend_from_slice(tag.as_bytes());
                }
            }
        }
        out
    }

    /// What srun --label does: per rank, lines (a partial line gets a newline), labelled.
    fn slurm_stream(streams: &[Vec<u8>], cuts: &[usize], order: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = vec![0usize; streams.len()];
        let mut k = 0;
        while pos.iter().zip(streams).any(|(p, s)| *p < s.len()) {
            let want = order[k % order.len()] % streams.len();
            let len = cuts[k % cuts.len()].max(1);
            k += 1;
            let Some(r) = (0..streams.len())
                .map(|i| (want + i) % streams.len())
                .find(|&r| pos[r] < streams[r].len())
            else {
                break;
            };
            let s = &streams[r];
            let end = (pos[r] + len).min(s.len());
            for line in s[pos[r]..end].split_inclusive(|&b| b == b'\n') {
                out.extend_from_slice(format!("{r:>2}: ").as_bytes());
                out.extend_from_slice(line);
                if line.last() != Some(&b'\n') {
                    out.push(b'\n');
                }
            }
            pos[r] = end;
        }
        out
    }

    fn check(tagging: Tagging, lines: Vec<Vec<Vec<u8>>>, feed_cuts: &[usize], wire: Vec<u8>) {
        let mut rs = RecordStream::new(tagging);
        let mut got: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        let mut at = 0;
        let mut k = 0;
        while at < wire.len() {
            let end = (at + feed_cuts[k % feed_cuts.len()].max(1)).min(wire.len());
            k += 1;
            let (recs, text) = rs.feed(&wire[at..end]);
            assert!(
                text.is_empty(),
                "untagged text {:?}",
                String::from_utf8_lossy(&text)
            );
            for (r, x) in recs {
                got.entry(r).or_default().push(x);
            }
            at = end;
        }
        let (recs, _) = rs.finish();
        for (r, x) in recs {
            got.entry(r).or_default().push(x);
        }
        for (r, l) in lines.iter().enumerate() {
            let (want, _) = records_of(r as u32, l);
            assert_eq!(got.get(&(r as u32)), Some(&want), "rank {r}");
        }
        assert!(rs.problems().is_empty(), "{:?}", rs.problems());
    }

    fn line_strategy() -> impl Strategy<Value = Vec<u8>> {
        // Lines with every troublesome byte, some longer than one piece.
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            proptest::collection::vec(
                prop_oneof![
                    Just(b'['),
                    Just(b'$'),
                    Just(b'\n'),
                    Just(b':'),
                    Just(b' '),
                    any::<u8>()
                ],
                0..200
            ),
            (0usize..3).prop_map(|k| vec![b'x'; MAX_PIECE * k + 7]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn records_survive_open_mpi_chunking_and_interleaving(
            lines in proptest::collection::vec(proptest::collection::vec(line_strategy(), 0..6), 1..4),
            cuts in proptest::collection::vec(1usize..5000, 1..8),
            order in proptest::collection::vec(0usize..4, 1..8),
            feed_cuts in proptest::collection::vec(1usize..3000, 1..8),
        ) {
            let streams: Vec<Vec<u8>> = lines.iter().enumerate().map(|(r, l)| records_of(r as u32, l).1).collect();
            let wire = ompi_stream(&streams, &cuts, &order);
            check(Tagging::OpenMpi, lines, &feed_cuts, wire);
        }

        #[test]
        fn records_survive_slurm_labels_and_inserted_newlines(
            lines in proptest::collection::vec(proptest::collection::vec(line_strategy(), 0..6), 1..4),
            cuts in proptest::collection::vec(1usize..5000, 1..8),
            order in proptest::collection::vec(0usize..4, 1..8),
            feed_cuts in proptest::collection::vec(1usize..3000, 1..8),
        ) {
            let streams: Vec<Vec<u8>> = lines.iter().enumerate().map(|(r, l)| records_of(r as u32, l).1).collect();
            let wire = slurm_stream(&streams, &cuts, &order);
            check(Tagging::SlurmLabel, lines, &feed_cuts, wire);
        }

        #[test]
        fn the_fuzz_entry_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = fuzz_launcher_output(&bytes);
        }

        #[test]
        fn garbage_never_panics_and_is_counted(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            payload in "[A-Za-z0-9+/=]{0,100}",
        ) {
            for t in [Tagging::OpenMpi, Tagging::SlurmLabel, Tagging::Fixed(3)] {
                let mut rs = RecordStream::new(t);
                let (mut recs, mut text) = rs.feed(&bytes);
                let (r2, t2) = rs.finish();
                recs.extend(r2);
                text.extend(t2);
                let problems = rs.problems();
                // Under Fixed every byte is the rank's: any byte other than a newline or
                // an empty record's `$` ends up in a record, a counted bad record, or the
                // unterminated leftover. Nothing vanishes silently.
                if t == Tagging::Fixed(3) && bytes.iter().any(|b| !b"\n\r$".contains(b)) {
                    prop_assert!(
                        !recs.is_empty() || !problems.is_empty(),
                        "{t:?}: {} bytes gave no record and no problem", bytes.len()
                    );
                }
                prop_assert!(
                    problems.iter().all(|p| p.1 > 0 || p.3 > 0),
                    "{t:?}: a listed problem with nothing wrong: {problems:?}"
                );
            }
            // A well-tagged record of an unknown kind is skipped and counted against its rank.
            for (t, wire) in [
                (Tagging::OpenMpi, format!("[1,5]<stdout>:Z{payload}$\n")),
                (Tagging::SlurmLabel, format!("5: Z{payload}$\n")),
                (Tagging::Fixed(5), format!("Z{payload}$")),
            ] {
                let mut rs = RecordStream::new(t);
                let (mut recs, mut text) = rs.feed(wire.as_bytes());
                let (r2, t2) = rs.finish();
                recs.extend(r2);
                text.extend(t2);
                prop_assert!(recs.is_empty() && text.is_empty(), "{t:?}: {recs:?} {text:?}");
                let p = rs.problems();
                prop_assert_eq!(p.len(), 1, "{:?}: {:?}", t, p);
                prop_assert_eq!((p[0].0, p[0].1, p[0].3), (5, 1, 0), "{:?}: {:?}", t, p);
                prop_assert!(
                    p[0].2.as_deref().is_some_and(|e| e.contains("unknown record kind 'Z'")),
                    "{:?}: {:?}", t, p
                );
            }
        }
    }

    #[test]
    fn launcher_text_is_kept_apart_and_bad_records_are_counted() {
        let mut rs = RecordStream::new(Tagging::OpenMpi);
        let (recs, text) = rs.feed(b"mpirun: hello\n[1,2]<stdout>:Xnope$X3$[1,0]<stdout>:Q1$");
        assert_eq!(text, b"mpirun: hello\n");
        assert_eq!(recs, vec![(2, Record::Exited(3))]);
        let p = rs.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        let mut rs = RecordStream::new(Tagging::SlurmLabel);
        let (recs, text) = rs.feed(b"srun: error: x\n 1: X0$\n10: S9$\n");
        assert_eq!(text, b"srun: error: x\n");
        assert_eq!(
            recs,
            vec![(1, Record::Exited(0)), (10, Record::Signaled(9))]
        );
    }

    /// Regression (review): an exit status or signal outside what a process can end with
    /// was taken as it was; `X-1` became a failure whose exit code, clamped to 0..=255 by
    /// `lazarus run`, was 0 (success).
    #[test]
    fn an_impossible_exit_status_in_a_record_was_taken_as_it_was() {
        let mut rs = RecordStream::new(Tagging::Fixed(0));
        let (recs, _) = rs.feed(b"X-1$X256$S0$S-200$S128$X255$S9$");
        assert_eq!(
            recs,
            vec![(0, Record::Exited(255)), (0, Record::Signaled(9))]
        );
        let p = rs.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].1, 5, "{p:?}");
    }
}
