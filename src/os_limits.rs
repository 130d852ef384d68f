//! The address space this process may still use (`RLIMIT_AS`, `ulimit -v`), so that large
//! allocations (decoding an image, opening a GPU device through a software driver) are refused
//! with a clear error instead of aborting ("memory allocation of N bytes failed") or crashing
//! inside a driver; and the file-size limit (`RLIMIT_FSIZE`, `ulimit -f`), which errors name
//! and which a driver backing GPU memory with files must not run into.
//!
//! Read from `/proc/self/limits` and `/proc/self/status` (Linux); elsewhere, or when they cannot
//! be read, nothing is known and nothing is refused.

use crate::error::{Error, Result};

/// The soft limit named `name` in `/proc/self/limits` ("Max address space"), `None` when
/// unlimited or unknown.
fn soft_limit(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft `RLIMIT_AS` in bytes, `None` when unlimited or unknown.
pub fn address_space_limit() -> Option<u64> {
    soft_limit("Max address space")
}

/// The soft `RLIMIT_FSIZE` (`ulimit -f`) in bytes: the largest file this process may write,
/// `None` when unlimited or unknown.
pub fn file_size_limit() -> Option<u64> {
    soft_limit("Max file size")
}

/// The address space this process uses now (`VmSize`), in bytes.
pub fn address_space_used() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    kb.checked_mul(1024)
}

/// Bytes of address space left under `RLIMIT_AS`: `None` when there is no limit (or it cannot
/// be read).
pub fn address_space_left() -> Option<u64> {
    let limit = address_space_limit()?;
    Some(limit.saturating_sub(address_space_used().unwrap_or(0)))
}

fn mib(b: u64) -> u64 {
    b.div_ceil(1 << 20)
}

/// An error when `need` more bytes of address space are not available under `RLIMIT_AS`;
/// `what` says what needs them ("decoding a 7000x7000 image").
pub fn check_address_space(need: u64, what: &str) -> Result<()> {
    let Some(left) = address_space_left() else {
        return Ok(());
    };
    if need <= left {
        return Ok(());
    }
    Err(Error::arg(
        "memory",
        format!(
            "ulimit -v {} (RLIMIT_AS)",
            address_space_limit().map_or(0, |l| l / 1024)
        ),
        format!(
            "{what} needs about {} MiB of address space, but only {} MiB are left under the \
             limit; raise it (ulimit -v) or give smaller inputs",
            mib(need),
            mib(left)
        ),
    ))
}

/// Address space a GPU device needs when it is opened, beyond what the process already uses:
/// measured with Mesa 22.3's lavapipe (the software Vulkan driver, whose LLVM JIT and
/// per-core threads reserve the most) on 2 cores, where `infer` of one image under
/// `ulimit -v` crashed inside `vkCreateDevice` (double free at 262144 KiB, segfaults from
/// 400000 to 800000 KiB, `std::bad_alloc` once at 1000000 KiB) or failed cleanly, at random
/// from run to run, and ran every time from 1020000 KiB (the process then used ~35 MiB);
/// the per-core term covers the driver's threads on larger CPUs.
pub const DEVICE_ADDRESS_SPACE: u64 = 1 << 30;
/// Address space per CPU core added to [`DEVICE_ADDRESS_SPACE`] (a software driver's thread
/// stacks and JIT arenas).
pub const DEVICE_ADDRESS_SPACE_PER_CORE: u64 = 32 << 20;

/// An error, before a GPU device is opened, when `RLIMIT_AS` leaves less than a driver needs
/// ([`DEVICE_ADDRESS_SPACE`] plus [`DEVICE_ADDRESS_SPACE_PER_CORE`] per core): a driver that
/// runs out of address space inside `vkCreateDevice` can crash the process instead of
/// returning an error.
pub fn check_address_space_for_device() -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let need = DEVICE_ADDRESS_SPACE + DEVICE_ADDRESS_SPACE_PER_CORE * cores;
    log::debug!(
        "address space: {} MiB used, limit {}, {} MiB needed to open a device",
        address_space_used().map_or(0, mib),
        address_space_limit().map_or("none".to_string(), |l| format!("{} MiB", mib(l))),
        mib(need)
    );
    check_address_space(
        need,
        "opening a GPU device (a software driver such as lavapipe)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_known_on_linux_and_a_huge_need_is_refused_only_under_a_limit() {
        if cfg!(target_os = "linux") {
            assert!(address_space_used().is_some_and(|u| u > 0));
        }
        match address_space_left() {
            None => assert!(check_address_space(u64::MAX, "x").is_ok()),
            Some(_) => {
                let e = check_address_space(u64::MAX, "decoding x").unwrap_err();
                assert!(e.to_string().contains("decoding x"), "{e}");
            }
        }
        assert!(check_address_space(0, "nothing").is_ok());
    }

    #[test]
    fn the_file_size_limit_is_read_where_linux_says_it() {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with("Max file size")) {
            let soft = line.split_whitespace().nth(3).unwrap();
            assert_eq!(file_size_limit(), soft.parse().ok(), "{line}");
        } else {
            assert_eq!(file_size_limit(), None);
        }
    }
}
