//! Balancing several `DVec`s that must stay on one partition (points and their labels).
//!
//! Row `g` of every member belongs together, so the members must always be cut at the
//! same boundaries: [`balance_together`] measures the work of all of them, lets one
//! policy decide, and moves every member to the same new distribution. Checkpoints need
//! nothing extra: each member saves its own block with its global range, so a same-size
//! restore gives every member the (shared) saved layout back, and an N -> M restore cuts
//! every member into the same even blocks (docs/DIST.md, "Balancing several DVecs
//! together").

use crate::balance::{Balancer, Decision, Sample};
use crate::collective::comm_err;
use crate::dvec::DVec;
use crate::elem::DElem;
use crate::error::{DistError, Result};
use crate::partition::Distribution;
use lazarus_net::Comm;

mod sealed {
    use super::*;

    /// What the group needs from a member; crate-private, so only this crate's types can
    /// join a group (their invariants are the group's guarantees).
    pub trait Member {
        /// The member's distribution (one allgather after a restore). Collective.
        fn distribution_of(&self, comm: &Comm) -> Result<Distribution>;
        /// The work measured since the last balancing call; resets the measurement.
        fn take_sample(&mut self) -> Sample;
        /// The member's balancing policy with its history, created on first use.
        fn balancer_mut(&mut self) -> Result<&mut Balancer>;
        /// Migrates to `to`. Collective.
        fn move_to(&mut self, comm: &Comm, to: &Distribution) -> Result<()>;
        /// The schema type name, for error messages.
        fn describe(&self) -> String;
    }
}

/// A distributed container whose rows the load balancer can move together with those of
/// others ([`balance_together`]). Implemented by every [`DVec`]; sealed.
pub trait Rebalance: sealed::Member {}

impl<T: DElem> sealed::Member for DVec<T> {
    fn distribution_of(&self, comm: &Comm) -> Result<Distribution> {
        self.sync_distribution(comm).cloned()
    }

    fn take_sample(&mut self) -> Sample {
        let s = Sample {
            elements: self.meter.elements,
            seconds: self.meter.seconds,
        };
        self.meter.elements = 0;
        self.meter.seconds = 0.0;
        s
    }

    fn balancer_mut(&mut self) -> Result<&mut Balancer> {
        if self.balancer.is_none() {
            self.balancer = Some(Balancer::new(
                self.balance_cfg.clone(),
                self.world as usize,
            )?);
        }
        self.balancer
            .as_mut()
            .ok_or_else(|| DistError::invalid("balancer missing"))
    }

    fn move_to(&mut self, comm: &Comm, to: &Distribution) -> Result<()> {
        self.redistribute(comm, to)
    }

    fn describe(&self) -> String {
        self.type_name()
    }
}

impl<T: DElem> Rebalance for DVec<T> {}

/// Load balancing of several vectors that share one partition, in one call: every member
/// must have the same distribution (same length, same blocks); the work measured by all
/// of them since the last call is combined per rank (the elements of the member that
/// processed most, the seconds of all: the members' work is on the same rows), the first
/// member's policy ([`crate::BalanceConfig`], rate history, cooldown) decides, and if it
/// says so every member migrates to the same new blocks. Every rank gets the same
/// decision, and row `g` of every member stays on the same rank. Collective; every rank
/// passes the members in the same order.
///
/// Errors, before anything moves, when the members are not aligned (naming the member and
/// both layouts) or the list is empty. A communication failure during the migrations can
/// leave the members misaligned; as with any collective failure the job must restore.
///
/// ```
/// use lazarus_dist::{balance_together, DVec, Decision, Rebalance};
/// lazarus_net::local(3, |comm| {
///     let mut points = DVec::<f64>::with_width(&comm, 300, 2).unwrap();
///     let mut labels = DVec::<u32>::new(&comm, 300).unwrap();
///     // Rank 1 reports three times the time per row: it should get fewer rows.
///     let secs = if comm.rank().0 == 1 { 3.0 } else { 1.0 };
///     points.record_work(100, secs);
///     let d = balance_together(&comm, &mut [&mut points, &mut labels]).unwrap();
///     assert!(matches!(d, Decision::Rebalance { .. }));
///     assert_eq!(points.range(), labels.range());
/// })
/// .unwrap();
/// ```
pub fn balance_together(comm: &Comm, members: &mut [&mut dyn Rebalance]) -> Result<Decision> {
    let Some((first, rest)) = members.split_first_mut() else {
        return Err(DistError::invalid(
            "balance_together needs at least one vector",
        ));
    };
    let dist = first.distribution_of(comm)?;
    for (i, m) in rest.iter().enumerate() {
        let d = m.distribution_of(comm)?;
        if d != dist {
            return Err(DistError::invalid(format!(
                "balance_together: member {} ({}) has the blocks {:?}, member 0 ({}) has {:?}; \
                 members must share one distribution (the same length and layout, and only \
                 ever moved together)",
                i + 1,
                m.describe(),
                d.bounds(),
                first.describe(),
                dist.bounds()
            )));
        }
    }
    let mut mine = first.take_sample();
    for m in rest.iter_mut() {
        let s = m.take_sample();
        mine.elements = mine.elements.max(s.elements);
        mine.seconds += s.seconds;
    }
    let all: Vec<(u64, f64)> = comm
        .allgather(&(mine.elements, mine.seconds))
        .map_err(comm_err("balance"))?;
    let samples: Vec<Sample> = all
        .iter()
        .map(|&(elements, seconds)| Sample { elements, seconds })
        .collect();
    let decision = {
        let b = first.balancer_mut()?;
        b.observe(&samples)?;
        b.decide(&dist)?
    };
    if let Decision::Rebalance { to, .. } = &decision {
        for m in members.iter_mut() {
            m.move_to(comm, to)?;
        }
    }
    Ok(decision)
}
