//! The process's file-descriptor budget.
//!
//! Every open connection is a descriptor. The caps of all listeners plus what
//! the process needs for itself (its database, outgoing HTTP and RPC
//! connections, logs) must fit under `RLIMIT_NOFILE`, or a flood on one
//! listener makes `accept` fail everywhere. At start-up the soft limit is raised
//! to the hard one (systemd's default soft limit is 1024; the units set
//! `LimitNOFILE=65536`), and when the caps still do not fit they are shrunk:
//! the private listener (the API socket) keeps a floor so the operator can
//! always get in, and the public ones share the rest in proportion.

/// Descriptors kept for the process itself.
pub const RESERVE: u64 = 128;
/// The private listener keeps at least this many connections when shrunk.
pub const PRIVATE_FLOOR: usize = 16;

/// The caps cannot fit under the limit even shrunk.
#[derive(Debug, thiserror::Error)]
#[error(
    "the file-descriptor limit ({limit}) is too low for the configured listeners: \
     {RESERVE} are kept for the daemon and each listener needs at least one; \
     raise LimitNOFILE (65536 in the shipped unit) or `ulimit -n`"
)]
pub struct TooFewDescriptors {
    /// The soft limit in force.
    pub limit: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit
/// now in force (unchanged if raising is refused).
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// Fits the caps under `limit`: returns the private cap and the public caps
/// (same order as given), each unchanged when everything fits. When shrinking,
/// the private listener keeps `min(private, max(PRIVATE_FLOOR, available / 4))`
/// and the public listeners share the rest in proportion to their caps.
pub fn fit(
    limit: u64,
    private: usize,
    public: &[usize],
) -> Result<(usize, Vec<usize>), TooFewDescriptors> {
    let wanted: u64 = public.iter().map(|&c| c as u64).sum::<u64>() + private as u64;
    let available = limit.saturating_sub(RESERVE);
    if wanted <= available {
        return Ok((private, public.to_vec()));
    }
    let too_few = TooFewDescriptors { limit };
    let floor = PRIVATE_FLOOR.min(private) as u64;
    let private_cap = (private as u64).min(floor.max(available / 4));
    let rest = available.saturating_sub(private_cap);
    let public_sum: u64 = public.iter().map(|&c| c as u64).sum();
    let mut out = Vec::with_capacity(public.len());
    for &cap in public {
        let share = (rest * cap as u64).checked_div(public_sum).unwrap_or(0);
        let share = usize::try_from(share).unwrap_or(usize::MAX).min(cap);
        if share == 0 && cap > 0 {
            return Err(too_few);
        }
        out.push(share);
    }
    if private_cap == 0 && private > 0 {
        return Err(too_few);
    }
    Ok((usize::try_from(private_cap).unwrap_or(private), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_fit_or_shrink_with_a_private_floor() {
        // Under the shipped LimitNOFILE everything fits as configured.
        assert_eq!(
            fit(65_536, 256, &[2048, 32]).ok(),
            Some((256, vec![2048, 32]))
        );
        // A low limit: the API keeps a quarter, the rest is shared.
        let (private, public) = fit(400, 256, &[2048, 32]).unwrap_or_default();
        assert_eq!(private, 68);
        assert_eq!(public, vec![200, 3]);
        let total: u64 = public.iter().sum::<usize>() as u64 + private as u64;
        assert!(total + RESERVE <= 400);
        // Very low: the floor holds; impossible: an error that says what to do.
        let (private, _) = fit(RESERVE + 40, 256, &[20]).unwrap_or_default();
        assert_eq!(private, PRIVATE_FLOOR);
        let e = fit(RESERVE + 10, 256, &[2048, 32]).unwrap_err();
        assert!(e.to_string().contains("LimitNOFILE"), "{e}");
    }

    #[test]
    fn raising_returns_the_limit_in_force() {
        let n = raise_nofile().unwrap_or(0);
        assert!(n >= 16, "{n}");
    }
}
