//! Server CPU time from /proc: utime + stime of the given processes and all their
//! descendants (gunicorn's workers, Flask's reloader child), in seconds.

use std::collections::HashMap;

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, utime + stime in ticks) from the text of /proc/<pid>/stat.
fn parse_stat(text: &str) -> Option<(i32, u64)> {
    // The command name is in parentheses and may contain spaces: fields start after ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU seconds used so far by `roots` and their descendants.
pub fn tree_seconds(roots: &[i32]) -> f64 {
    let mut procs: HashMap<i32, (i32, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(s) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                procs.insert(pid, s);
            }
        }
    }
    let mut total = 0u64;
    for (&pid, &(_, ticks)) in &procs {
        // Walk up the parent chain to see whether a root is an ancestor (or itself).
        let mut cur = pid;
        for _ in 0..64 {
            if roots.contains(&cur) {
                total += ticks;
                break;
            }
            match procs.get(&cur) {
                Some(&(ppid, _)) if ppid > 1 => cur = ppid,
                _ => break,
            }
        }
    }
    total as f64 / clock_ticks()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces() {
        let s = "123 (a b) S 7 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat(s), Some((7, 300)));
    }

    #[test]
    fn own_process_uses_cpu() {
        let me = std::process::id() as i32;
        let mut x = 0u64;
        for i in 0..30_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(tree_seconds(&[me]) > 0.0);
    }
}
