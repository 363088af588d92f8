//! What the kernel says about a process: CPU time from `/proc/PID/stat` (utime + stime).
//! Linux only, which is where we measure.

use anyhow::{anyhow, Context as _};

/// Clock ticks per second for `/proc/PID/stat` times. Linux has used 100 on every common
/// architecture for decades (USER_HZ); `getconf CLK_TCK` says so on this machine too.
const TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time the process has used, in microseconds.
pub fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain spaces: fields start after ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15); index 0 here is field 3.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse::<u64>()
            .map_err(|e| anyhow!("/proc/{pid}/stat field {n}: {e}"))
    };
    let ticks = field(14)? + field(15)?;
    Ok(ticks * 1_000_000 / TICKS_PER_SECOND)
}

/// A CPU-time sample of several processes (a server and its helpers, say).
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// Total CPU microseconds of the sampled processes.
    pub cpu_us: u64,
    /// When it was taken.
    pub at: std::time::Instant,
}

/// Samples the summed CPU time of `pids`.
pub fn sample(pids: &[u32]) -> anyhow::Result<CpuSample> {
    let mut total = 0;
    for pid in pids {
        total += cpu_us(*pid)?;
    }
    Ok(CpuSample {
        cpu_us: total,
        at: std::time::Instant::now(),
    })
}

/// A short description of this machine for the report: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{model}, {cores} cores, {mem_gib:.1} GiB memory, Linux {kernel}")
}
