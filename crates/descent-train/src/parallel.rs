//! Data-parallel training: what the training loop needs from the processes it runs in.
//!
//! A run on `N` processes (ranks) splits every step's global batch across them: each rank
//! computes the gradient of its part of the samples, weighted by its share of the batch, the ranks
//! sum their gradients in one all-reduce over a flat buffer (every parameter's gradient end to
//! end, in optimizer order), and each applies the same optimizer step to the same weights. The
//! training loop talks to the other ranks only through [`Communicator`]: [`Local`] is the single
//! process (every call returns at once), and `MpiComm` (feature `mpi`) runs over MPI.

use crate::error::{Error, Result};

/// The collective operations of data-parallel training. Every rank must call the same operations
/// in the same order with buffers of the same lengths (the rules of MPI's collectives).
pub trait Communicator {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Replaces `buf` on every rank with its elementwise sum over all ranks (bucketed by the
    /// implementation into calls of bounded size).
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// [`Communicator::all_reduce_sum`] of a few `f64` values (losses and counts to agree on).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Replaces `buf` on every rank with rank `root`'s `buf` (the lengths must agree).
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Replaces `bytes` on every rank with rank `root`'s (of any length).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()>;
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
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
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

#[cfg(feature = "mpi")]
mod mpi_comm {
    use std::cell::{Cell, RefCell};

    use mpi::collective::SystemOperation;
    use mpi::topology::{Communicator as _, SimpleCommunicator};
    use mpi::traits::{CommunicatorCollectives, Root};

    use super::{Communicator, DEFAULT_BUCKET_VALUES};
    use crate::error::Result;

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
