//! What the kernel counts for a process: CPU time (of this process by its clock, of another by
//! `/proc/<pid>/stat`) and peak resident memory (`/proc/<pid>/status`). One place for the
//! figures every mode reports (CPU per event, peak RSS), so they are read the same way.

use std::time::Duration;

/// CPU time this process has consumed so far, every thread (`CLOCK_PROCESS_CPUTIME_ID`, at
/// nanosecond resolution).
pub fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// utime + stime of process `pid` (`/proc/<pid>/stat`, every thread), at the kernel's clock
/// tick resolution (`_SC_CLK_TCK`, usually 10 ms).
///
/// # Errors
/// The process is gone (or its stat unreadable or malformed), or the tick rate is unknown.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command (which may hold spaces and parentheses) start at the state
    // (field 3); utime and stime are fields 14 and 15.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or("no command in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {n}"))
    };
    let ticks = field(14)? + field(15)?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return Err("sysconf(_SC_CLK_TCK) failed".into());
    }
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Peak resident set size (`VmHWM`) of process `pid`, in KiB; `None` once the process is gone
/// or when its status has no such line.
pub fn max_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/<pid>/stat` agrees with the process's CPU clock to within two clock ticks,
    /// however loaded the machine (the spin lasts 300 ms of CPU, not of wall time).
    #[test]
    fn cpu_time_counts_this_process() {
        let pid = std::process::id();
        let (before, clock) = (cpu_time(pid).unwrap(), process_cpu());
        let mut x = 0u64;
        while process_cpu() - clock < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let spent = cpu_time(pid).unwrap() - before;
        let clocked = process_cpu() - clock;
        let diff = spent.abs_diff(clocked);
        assert!(
            diff <= Duration::from_millis(20),
            "stat {spent:?}, clock {clocked:?}"
        );
    }
}
