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

/// utime + stime of process `pid` (every thread), at the kernel's clock-tick resolution: the
/// runner's own reading (`local::runtime::cpu_time`).
pub use local::runtime::cpu_time;

/// Peak resident set size (`VmHWM`) of process `pid`, in KiB: the runner's own reading
/// (`local::runtime::peak_rss_kib`), so the benchmarks and `REPORT` lines agree.
pub use local::runtime::peak_rss_kib as max_rss_kib;

/// CPU time consumed so far by process `root` and every process below it (the processes
/// alive now: a child that already exited is not counted), and the part of it spent by those
/// whose command line holds `marked` (e.g. the emulator's script name).
pub fn tree_cpu_time(root: u32, marked: &str) -> (Duration, Duration) {
    let parent = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(1)?.parse().ok()
    };
    let pids: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent(pid)?)))
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let of = tree[i];
        tree.extend(pids.iter().filter(|(_, p)| *p == of).map(|(pid, _)| *pid));
        i += 1;
    }
    let (mut all, mut part) = (Duration::ZERO, Duration::ZERO);
    for pid in tree {
        let Ok(cpu) = cpu_time(pid) else { continue };
        all += cpu;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marked) {
            part += cpu;
        }
    }
    (all, part)
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

    /// A child's CPU counts in its parent's tree, and in the marked part when its command line
    /// holds the mark.
    #[test]
    fn a_tree_counts_its_children() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done; echo tree-mark"])
            .spawn()
            .unwrap();
        let me = std::process::id();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let seen = loop {
            let seen = tree_cpu_time(me, "tree-mark");
            if seen.1 > Duration::ZERO || std::time::Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(seen.1 > Duration::ZERO, "the marked child's CPU: {seen:?}");
        assert!(seen.0 > seen.1, "this process counts too: {seen:?}");
    }
}
