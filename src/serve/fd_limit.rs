//! The open-file limit, which bounds how many connections the server can hold: each is a file
//! descriptor, and once none is left `accept` fails and no client is answered at all.

/// Descriptors kept for everything but connections: the standard streams, the listener, the
/// runtime's poller and wakers, the weights file, and the one a refused connection takes while it
/// is answered 503.
pub(crate) const RESERVED: u64 = 32;

/// The soft open-file limit (RLIMIT_NOFILE), first raised towards `wanted` as far as the hard
/// limit allows; `None` where the platform has no such limit or it is unlimited.
#[cfg(unix)]
pub(crate) fn raise_to(wanted: u64) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    if current < wanted {
        let raised = Rlimit {
            current: Some(limit.maximum.map_or(wanted, |hard| hard.min(wanted))),
            maximum: limit.maximum,
        };
        // Refused (macOS caps it below an unlimited hard limit): the limit read again stands.
        let _ = setrlimit(Resource::Nofile, raised);
        return getrlimit(Resource::Nofile).current;
    }
    Some(current)
}

#[cfg(not(unix))]
pub(crate) fn raise_to(_wanted: u64) -> Option<u64> {
    None
}

/// The connection cap: `wanted`, or fewer where the open-file limit leaves less room than that
/// beside [`RESERVED`]; `None` when it leaves none at all.
pub(crate) fn cap(wanted: usize, limit: Option<u64>) -> Option<usize> {
    let room = limit.map_or(u64::MAX, |l| l.saturating_sub(RESERVED));
    let cap = (wanted as u64).min(room);
    (cap > 0).then_some(cap as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_limit() {
        assert_eq!(cap(4096, Some(128)), Some(128 - RESERVED as usize));
        assert_eq!(cap(10, Some(128)), Some(10));
        assert_eq!(cap(10, None), Some(10));
        assert_eq!(cap(10, Some(RESERVED)), None);
    }
}
