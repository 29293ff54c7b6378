//! Data-parallel training: what the training loop needs from the processes it runs in.
//!
//! A run on `N` processes (ranks) splits every step's global batch across them: each rank
//! computes the gradient of its part of the samples, weighted by its share of the batch, the ranks
//! sum their gradients in one all-reduce over a flat buffer (every parameter's gradient end to
//! end, in optimizer order), and each applies the same optimizer step to the same weights. The
//! training loop talks to the other ranks only through [`Communicator`]: [`Local`] is the single
//! process (every call returns at once), `MpiComm` (feature `mpi`) runs over MPI, and [`Threads`]
//! are replicas in threads of one process ([`on_threads`]).

use std::ops::Range;

use crate::error::{Error, Result};

/// The collective operations of data-parallel training. Every rank must call the same operations
/// in the same order with buffers of the same lengths (the rules of MPI's collectives).
pub trait Communicator {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// What a rank is called in messages: "rank" (a process), "replica" (a thread).
    fn unit(&self) -> &'static str {
        "rank"
    }
    /// Replaces `buf` on every rank with its elementwise sum over all ranks (bucketed by the
    /// implementation into calls of bounded size).
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// [`Communicator::all_reduce_sum`] of a few `f64` values (losses and counts to agree on).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank with rank `root`'s `buf` (the lengths must agree).
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Replaces `bytes` on every rank with rank `root`'s (of any length).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Sums `buf` elementwise over all ranks and leaves each rank its own part of the sum:
    /// `out` receives the sum's values at `bounds[rank]` (reduce-scatter; `bounds` are every
    /// rank's contiguous ranges of `buf`, in rank order, covering it).
    fn reduce_scatter_sum(&self, buf: &[f32], bounds: &[Range<usize>], out: &mut [f32]) -> Result<()>;
    /// Fills `buf` on every rank with each rank's values at its range `bounds[rank]`
    /// (all-gather; this rank's own range is read from `buf`).
    fn all_gather(&self, buf: &mut [f32], bounds: &[Range<usize>]) -> Result<()>;
    /// Every rank's `send`, end to end in rank order, on rank `root` (gather; the other ranks get
    /// an empty vector). `counts[r]` is rank `r`'s length.
    fn gather_to(&self, send: &[f32], counts: &[usize], root: usize) -> Result<Vec<f32>>;
    /// Ends the run on every rank with this exit code (`MPI_Abort`): what a rank that failed
    /// calls after printing why, so that the others, maybe waiting in a collective, stop at once
    /// instead of hanging. [`Local`] exits the process.
    fn abort(&self, code: i32) -> !;
}

/// One process: nothing to communicate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Communicator for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>, _root: usize) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum(&self, buf: &[f32], bounds: &[Range<usize>], out: &mut [f32]) -> Result<()> {
        check_bounds(buf.len(), bounds, 1)?;
        out.copy_from_slice(&buf[bounds[0].clone()]);
        Ok(())
    }
    fn all_gather(&self, buf: &mut [f32], bounds: &[Range<usize>]) -> Result<()> {
        check_bounds(buf.len(), bounds, 1)
    }
    fn gather_to(&self, send: &[f32], _counts: &[usize], _root: usize) -> Result<Vec<f32>> {
        Ok(send.to_vec())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// `bounds` are `size` contiguous ranges in rank order covering `0..n`.
pub(crate) fn check_bounds(n: usize, bounds: &[Range<usize>], size: usize) -> Result<()> {
    let covers = bounds.len() == size
        && bounds.first().is_some_and(|b| b.start == 0)
        && bounds.last().is_some_and(|b| b.end == n)
        && bounds.windows(2).all(|w| w[0].end == w[1].start)
        && bounds.iter().all(|b| b.start <= b.end);
    if covers {
        Ok(())
    } else {
        Err(Error::Param(format!("the ranges {bounds:?} do not split 0..{n} among {size} ranks")))
    }
}

/// Every rank's part of the flat parameter space of tensors of these lengths (end to end) when
/// the optimizer is sharded: contiguous ranges in rank order, as even as [`share`]'s but with
/// every cut either on a tensor boundary or a multiple of `descent_core::kernel::BLOCK` values
/// into its tensor, where the fused kernels start their blocks (block-wise quantized state keeps
/// the blocks of the whole tensor). Ranks may get empty ranges when there are few values.
pub fn shard_bounds(lens: &[usize], size: usize) -> Vec<Range<usize>> {
    let block = descent_core::kernel::BLOCK;
    let n: usize = lens.iter().sum();
    let mut starts = Vec::with_capacity(lens.len() + 1);
    let mut at = 0;
    for &l in lens {
        starts.push(at);
        at += l;
    }
    starts.push(n);
    let mut cuts = vec![0];
    for r in 1..size {
        let ideal = share(n, r, size).start;
        // The tensor holding `ideal`, and the nearest allowed cut in it.
        let t = starts.partition_point(|&s| s <= ideal).saturating_sub(1).min(lens.len().saturating_sub(1));
        let cut = if lens.is_empty() {
            0
        } else {
            let (s, e) = (starts[t], starts[t + 1]);
            let k = ((ideal - s) as f64 / block as f64).round() as usize;
            (s + k * block).min(e)
        };
        cuts.push(cut.max(*cuts.last().expect("starts at 0")));
    }
    cuts.push(n);
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

/// A `u64` as rank `root` holds it, on every rank.
pub fn broadcast_u64(comm: &dyn Communicator, v: u64, root: usize) -> Result<u64> {
    if comm.size() == 1 {
        return Ok(v);
    }
    let mut b = v.to_le_bytes().to_vec();
    comm.broadcast_bytes(&mut b, root)?;
    let arr: [u8; 8] = b.as_slice().try_into().map_err(|_| Error::Param("broadcast of a u64 lost bytes".into()))?;
    Ok(u64::from_le_bytes(arr))
}

/// True on every rank when `flag` is true on any (a stop that one rank asks for ends the run on
/// all).
pub fn any(comm: &dyn Communicator, flag: bool) -> Result<bool> {
    if comm.size() == 1 {
        return Ok(flag);
    }
    let mut v = [if flag { 1.0 } else { 0.0 }];
    comm.all_reduce_sum_f64(&mut v)?;
    Ok(v[0] > 0.0)
}

/// The part of `n` items that rank `rank` of `size` takes: a contiguous range, the ranks' parts
/// differing in length by at most one (the first `n % size` ranks take one more).
pub fn share(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let (q, r) = (n / size, n % size);
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}

/// The bucket size of an all-reduce by default: 4 Mi values (16 MiB of f32), as PyTorch DDP's
/// default buckets are tens of megabytes: large enough that latency is paid a few times per
/// step, small enough that the scratch buffer stays modest.
pub const DEFAULT_BUCKET_VALUES: usize = 4 << 20;

#[cfg(feature = "mpi")]
pub use self::mpi_comm::MpiComm;

mod threads;
pub use self::threads::{on_threads, Threads, STOPPED};

#[cfg(feature = "mpi")]
mod mpi_comm {
    use std::cell::{Cell, RefCell};

    use std::ops::Range;

    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::topology::{Communicator as _, SimpleCommunicator};
    use mpi::traits::{CommunicatorCollectives, Root};
    use mpi::Count;

    use super::{check_bounds, Communicator, DEFAULT_BUCKET_VALUES};
    use crate::error::{Error, Result};

    /// A count as MPI takes it.
    fn count(n: usize) -> Result<Count> {
        Count::try_from(n).map_err(|_| Error::Param(format!("{n} values in one MPI call: more than it can count")))
    }

    /// Counts and displacements of a varcount call.
    fn layout(counts: &[usize]) -> Result<(Vec<Count>, Vec<Count>)> {
        let c: Vec<Count> = counts.iter().map(|&n| count(n)).collect::<Result<_>>()?;
        let mut d = Vec::with_capacity(c.len());
        let mut at = 0usize;
        for &n in counts {
            d.push(count(at)?);
            at += n;
        }
        Ok((c, d))
    }

    /// The ranks of `MPI_COMM_WORLD` (a program started by `mpirun`). All-reduces go in buckets
    /// of at most `bucket` values through one scratch buffer; MPI is finalized when this is
    /// dropped.
    pub struct MpiComm {
        world: SimpleCommunicator,
        bucket: usize,
        scratch: RefCell<Vec<f32>>,
        /// Seconds spent inside MPI calls so far (what `descent bench train` reports).
        seconds: Cell<f64>,
        // Dropped last: finalizes MPI.
        _universe: mpi::environment::Universe,
    }

    impl MpiComm {
        /// Initializes MPI (funneled: only the main thread calls it; the worker threads compute).
        /// `None` when MPI was already initialized.
        pub fn init() -> Option<MpiComm> {
            let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)?;
            let world = universe.world();
            Some(MpiComm {
                world,
                bucket: DEFAULT_BUCKET_VALUES,
                scratch: RefCell::new(vec![]),
                seconds: Cell::new(0.0),
                _universe: universe,
            })
        }

        /// Sets the largest number of values one all-reduce call carries.
        pub fn set_bucket_values(&mut self, values: usize) {
            self.bucket = values.max(1);
        }

        /// Seconds spent in collective calls since the start.
        pub fn seconds(&self) -> f64 {
            self.seconds.get()
        }

        /// A panic on any thread prints the rank and the message, then aborts every rank
        /// (`MPI_Abort`), so that no other rank waits for this one in a collective.
        pub fn abort_on_panic(&self) {
            let (rank, size) = (self.rank(), self.size());
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default(info);
                eprintln!("error: rank {rank} of {size} panicked; stopping every rank");
                SimpleCommunicator::world().abort(3)
            }));
        }

        fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
            let t0 = std::time::Instant::now();
            let r = f();
            self.seconds.set(self.seconds.get() + t0.elapsed().as_secs_f64());
            r
        }
    }

    impl Communicator for MpiComm {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            self.timed(|| {
                let mut scratch = self.scratch.borrow_mut();
                for chunk in buf.chunks_mut(self.bucket) {
                    scratch.clear();
                    scratch.extend_from_slice(chunk);
                    self.world.all_reduce_into(&scratch[..], chunk, SystemOperation::sum());
                }
            });
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            self.timed(|| {
                let send = buf.to_vec();
                self.world.all_reduce_into(&send[..], buf, SystemOperation::sum());
            });
            Ok(())
        }
        fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
            self.timed(|| {
                let root = self.world.process_at_rank(root as i32);
                for chunk in buf.chunks_mut(self.bucket) {
                    root.broadcast_into(chunk);
                }
            });
            Ok(())
        }
        fn reduce_scatter_sum(&self, buf: &[f32], bounds: &[Range<usize>], out: &mut [f32]) -> Result<()> {
            let size = self.size();
            check_bounds(buf.len(), bounds, size)?;
            let mine = bounds[self.rank()].clone();
            if out.len() != mine.len() {
                return Err(Error::Param(format!("{} values for this rank's {} of the sum", out.len(), mine.len())));
            }
            // MPI_Reduce_scatter_block over equal blocks: each rank's range, zero-padded to the
            // longest, a bucket's worth at a time.
            let longest = bounds.iter().map(|b| b.len()).max().unwrap_or(0);
            let per = (self.bucket / size).max(1);
            self.timed(|| {
                let mut scratch = self.scratch.borrow_mut();
                let mut recv = vec![0.0f32; per.min(longest)];
                let mut at = 0;
                while at < longest {
                    let w = per.min(longest - at);
                    scratch.clear();
                    scratch.resize(w * size, 0.0);
                    for (r, b) in bounds.iter().enumerate() {
                        let (s, e) = ((b.start + at).min(b.end), (b.start + at + w).min(b.end));
                        scratch[r * w..r * w + (e - s)].copy_from_slice(&buf[s..e]);
                    }
                    self.world.reduce_scatter_block_into(&scratch[..], &mut recv[..w], SystemOperation::sum());
                    let own = w.min(mine.len().saturating_sub(at));
                    out[at..at + own].copy_from_slice(&recv[..own]);
                    at += w;
                }
            });
            Ok(())
        }
        fn all_gather(&self, buf: &mut [f32], bounds: &[Range<usize>]) -> Result<()> {
            let size = self.size();
            check_bounds(buf.len(), bounds, size)?;
            let mine = bounds[self.rank()].clone();
            let longest = bounds.iter().map(|b| b.len()).max().unwrap_or(0);
            let per = (self.bucket / size).max(1);
            let mut send = vec![];
            let mut recv = vec![];
            let mut at = 0;
            while at < longest {
                let w = per.min(longest - at);
                let part = |b: &Range<usize>| (b.start + at).min(b.end)..(b.start + at + w).min(b.end);
                let counts: Vec<usize> = bounds.iter().map(|b| part(b).len()).collect();
                let (c, d) = layout(&counts)?;
                send.clear();
                send.extend_from_slice(&buf[part(&mine)]);
                recv.clear();
                recv.resize(counts.iter().sum(), 0.0f32);
                self.timed(|| {
                    let mut p = PartitionMut::new(&mut recv[..], c, d);
                    self.world.all_gather_varcount_into(&send[..], &mut p);
                });
                let mut from = 0;
                for b in bounds {
                    let r = part(b);
                    let len = r.len();
                    buf[r].copy_from_slice(&recv[from..from + len]);
                    from += len;
                }
                at += w;
            }
            Ok(())
        }
        fn gather_to(&self, send: &[f32], counts: &[usize], root: usize) -> Result<Vec<f32>> {
            if counts.len() != self.size() || counts[self.rank()] != send.len() {
                return Err(Error::Param(format!(
                    "gather: {} values sent, the counts {counts:?} say otherwise",
                    send.len()
                )));
            }
            let proc = self.world.process_at_rank(root as i32);
            if self.rank() != root {
                self.timed(|| proc.gather_varcount_into(send));
                return Ok(vec![]);
            }
            let (c, d) = layout(counts)?;
            let mut out = vec![0.0f32; counts.iter().sum()];
            self.timed(|| {
                let mut p = PartitionMut::new(&mut out[..], c, d);
                proc.gather_varcount_into_root(send, &mut p);
            });
            Ok(out)
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
        fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
            self.timed(|| {
                let proc = self.world.process_at_rank(root as i32);
                let mut len = bytes.len() as u64;
                proc.broadcast_into(&mut len);
                bytes.resize(len as usize, 0);
                for chunk in bytes.chunks_mut(1 << 30) {
                    proc.broadcast_into(chunk);
                }
            });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_bounds_cut_on_tensor_boundaries_or_blocks() {
        let block = descent_core::kernel::BLOCK;
        for lens in [vec![], vec![0], vec![5], vec![784 * 128, 128, 128 * 10, 10], vec![3 * block + 7, 1, block, 9000]]
        {
            let n: usize = lens.iter().sum();
            let mut starts = vec![0];
            for l in &lens {
                starts.push(starts.last().unwrap() + l);
            }
            for size in 1..6 {
                let b = shard_bounds(&lens, size);
                check_bounds(n, &b, size).unwrap();
                for r in &b[1..] {
                    let c = r.start;
                    let t = starts.partition_point(|&s| s <= c) - 1;
                    assert!(starts.contains(&c) || (c - starts[t]) % block == 0, "{lens:?} {size}: cut {c}");
                }
            }
        }
        // Large tensors split close to evenly.
        let b = shard_bounds(&[1 << 20], 4);
        assert!(b.iter().all(|r| r.len().abs_diff(1 << 18) <= block), "{b:?}");
    }

    #[test]
    fn shares_cover_the_items_once_and_differ_by_at_most_one() {
        for n in 0..40 {
            for size in 1..6 {
                let parts: Vec<_> = (0..size).map(|r| share(n, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{n} {size} {lens:?}");
            }
        }
    }
}
