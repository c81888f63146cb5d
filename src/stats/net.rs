//! Network counters of a pod, from `/proc/<pid>/net/dev` of a process in
//! the pod's network namespace (the pause process): the kernel shows the
//! namespace of the process, so berthd need not enter it.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{StatsError, malformed};

/// The interface the CRI reports as the pod's own when it exists.
const DEFAULT_INTERFACE: &str = "eth0";

/// Counters of one network interface since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// Interface name (`eth0`).
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors (bad frames, CRC, overruns).
    pub rx_errors: u64,
    /// Received packets dropped (no buffer, filtered).
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
}

/// The interfaces of one network namespace, loopback excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStats {
    /// When the counters were read.
    pub timestamp: SystemTime,
    /// Every interface but `lo`, in the kernel's order.
    pub interfaces: Vec<InterfaceStats>,
}

impl NetworkStats {
    /// The pod's main interface: `eth0` when it exists, else the first
    /// interface (containerd's choice); `None` without interfaces.
    pub fn default_interface(&self) -> Option<&InterfaceStats> {
        self.interfaces
            .iter()
            .find(|i| i.name == DEFAULT_INTERFACE)
            .or_else(|| self.interfaces.first())
    }
}

/// Reads the interfaces of the network namespace process `pid` is in.
pub fn read_net_dev(pid: u32) -> Result<NetworkStats, StatsError> {
    let path = PathBuf::from(format!("/proc/{pid}/net/dev"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        // ESRCH/EINVAL: the process exited (a zombie has no namespaces).
        Err(e)
            if e.kind() == ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(nix::libc::ESRCH | nix::libc::EINVAL)) =>
        {
            return Err(StatsError::ProcessNotFound { pid, path });
        }
        Err(source) => return Err(StatsError::Read { path, source }),
    };
    Ok(NetworkStats {
        timestamp: SystemTime::now(),
        interfaces: parse_net_dev(&path, &text)?,
    })
}

/// Parses the text of a `net/dev` file (`path` names it in errors): two
/// header lines, then `<name>: ` and 16 counters per interface (8 receive,
/// 8 transmit). Loopback is left out.
pub fn parse_net_dev(path: &Path, text: &str) -> Result<Vec<InterfaceStats>, StatsError> {
    let mut interfaces = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // The two header lines have a `|` where interface lines have `:`.
        if line.contains('|') || line.trim().is_empty() {
            continue;
        }
        let bad = |reason| malformed(path, i + 1, reason, line);
        let Some((name, counters)) = line.split_once(':') else {
            return Err(bad("expected `<interface>: <counters>`"));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("expected an interface name before `:`"));
        }
        let mut values = [0u64; 16];
        let mut words = counters.split_ascii_whitespace();
        for value in &mut values {
            *value = words
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| bad("expected 16 unsigned counters"))?;
        }
        if words.next().is_some() {
            return Err(bad("expected 16 unsigned counters"));
        }
        if name == "lo" {
            continue;
        }
        interfaces.push(InterfaceStats {
            name: name.to_string(),
            rx_bytes: values[0],
            rx_packets: values[1],
            rx_errors: values[2],
            rx_dropped: values[3],
            tx_bytes: values[8],
            tx_packets: values[9],
            tx_errors: values[10],
            tx_dropped: values[11],
        });
    }
    Ok(interfaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0
  eth0:18446744073709551615 200 3 4 0 0 0 0 5000 100 6 7 0 0 0 0
 net1: 10 1 0 0 0 0 0 0 20 2 0 0 0 0 0 0
";

    #[test]
    fn interfaces_without_loopback() {
        let interfaces = parse_net_dev(Path::new("/proc/1/net/dev"), NET_DEV).expect("parse");
        assert_eq!(
            interfaces,
            [
                InterfaceStats {
                    name: "eth0".into(),
                    rx_bytes: u64::MAX,
                    rx_packets: 200,
                    rx_errors: 3,
                    rx_dropped: 4,
                    tx_bytes: 5000,
                    tx_packets: 100,
                    tx_errors: 6,
                    tx_dropped: 7,
                },
                InterfaceStats {
                    name: "net1".into(),
                    rx_bytes: 10,
                    rx_packets: 1,
                    tx_bytes: 20,
                    tx_packets: 2,
                    ..InterfaceStats::default()
                },
            ]
        );
    }

    #[test]
    fn default_interface_is_eth0_else_the_first() {
        let mut stats = NetworkStats {
            timestamp: SystemTime::now(),
            interfaces: parse_net_dev(Path::new("dev"), NET_DEV).expect("parse"),
        };
        stats.interfaces.reverse();
        assert_eq!(
            stats.default_interface().map(|i| i.name.as_str()),
            Some("eth0")
        );
        stats.interfaces.retain(|i| i.name != "eth0");
        assert_eq!(
            stats.default_interface().map(|i| i.name.as_str()),
            Some("net1")
        );
        stats.interfaces.clear();
        assert_eq!(stats.default_interface(), None);
    }

    #[test]
    fn counters_glued_to_the_name_parse() {
        // Old kernels print `eth0:123` when the number is wide.
        let text = "eth0:123 1 0 0 0 0 0 0 456 2 0 0 0 0 0 0\n";
        let interfaces = parse_net_dev(Path::new("dev"), text).expect("parse");
        assert_eq!(interfaces[0].rx_bytes, 123);
        assert_eq!(interfaces[0].tx_bytes, 456);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let path = Path::new("/proc/7/net/dev");
        let cases = [
            ("eth0 1 2 3", "expected `<interface>: <counters>`"),
            (
                ": 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
                "expected an interface name before `:`",
            ),
            ("eth0: 1 2 3", "expected 16 unsigned counters"),
            (
                "eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 -16",
                "expected 16 unsigned counters",
            ),
            (
                "eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17",
                "expected 16 unsigned counters",
            ),
        ];
        for (line, reason) in cases {
            let text = format!("{}\n{line}\n", NET_DEV.trim_end());
            let err = parse_net_dev(path, &text).expect_err(line);
            assert_eq!(
                err.to_string(),
                format!("/proc/7/net/dev line 6: {reason}: {line:?}"),
            );
        }
    }

    #[test]
    fn reads_this_process_and_reports_a_gone_one() {
        let stats = read_net_dev(std::process::id()).expect("own net/dev");
        assert!(stats.interfaces.iter().all(|i| i.name != "lo"));
        let err = read_net_dev(u32::MAX).expect_err("no such process");
        assert!(
            matches!(err, StatsError::ProcessNotFound { pid: u32::MAX, .. }),
            "{err:?}"
        );
    }
}
