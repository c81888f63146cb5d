//! Platforms (`linux/amd64`, `linux/arm/v7`) and how a manifest list is
//! resolved to the one this node runs, following containerd's
//! `platforms.Only`: names normalised (`x86_64` is `amd64`, `aarch64` is
//! `arm64`, arm without a variant is `v7`), and a host that can run older
//! variants or a 32-bit architecture accepts them after its own.

use std::fmt;

/// An OS, CPU architecture (Go's `GOARCH` names) and optional variant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`, …
    pub architecture: String,
    /// `v7` for `arm/v7`; `None` when the architecture has only one.
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from its parts, normalised.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        normalize(os, architecture, variant.unwrap_or(""))
    }

    /// The platform this berthd was built for and runs on.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            "mips" if cfg!(target_endian = "little") => "mipsle",
            other => other,
        };
        let variant = match architecture {
            "arm" if cfg!(target_feature = "v7") => "v7",
            "arm" => "v6",
            _ => "",
        };
        normalize(std::env::consts::OS, architecture, variant)
    }

    /// The platforms this one runs, best first: itself, then older variants
    /// of its architecture, then the 32-bit architecture it can also run.
    fn runs(&self) -> Vec<Platform> {
        let mut runs = vec![self.clone()];
        let with = |architecture: &str, variant: Option<String>| Platform {
            os: self.os.clone(),
            architecture: architecture.to_owned(),
            variant,
        };
        match self.architecture.as_str() {
            "amd64" => runs.push(with("386", None)),
            "arm" => runs.extend(older_arm(self.variant.as_deref()).map(|v| with("arm", Some(v)))),
            "arm64" => {
                runs.push(with("arm", Some("v8".into())));
                runs.extend(older_arm(Some("v8")).map(|v| with("arm", Some(v))));
            }
            _ => {}
        }
        runs
    }

    /// How well this host runs `candidate`: `Some(0)` natively, larger for
    /// worse fits, `None` not at all.
    pub fn rank(&self, candidate: &Platform) -> Option<usize> {
        self.runs().iter().position(|p| p == candidate)
    }
}

/// arm variants below `variant`, newest first (`v7` → `v6`, `v5`).
fn older_arm(variant: Option<&str>) -> impl Iterator<Item = String> {
    let level = variant
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    (5..level).rev().map(|v| format!("v{v}"))
}

/// containerd's `platforms.Normalize`.
fn normalize(os: &str, architecture: &str, variant: &str) -> Platform {
    let os = os.to_ascii_lowercase();
    let architecture = architecture.to_ascii_lowercase();
    let (architecture, variant) = match (architecture.as_str(), variant) {
        ("i386", _) => ("386", ""),
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "v8.0") => ("arm64", ""),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "" | "7") => ("arm", "v7"),
        ("arm", "5") => ("arm", "v5"),
        ("arm", "6") => ("arm", "v6"),
        ("arm", "8") => ("arm", "v8"),
        (a, v) => (a, v),
    };
    Platform {
        os,
        architecture: architecture.to_owned(),
        variant: (!variant.is_empty()).then(|| variant.to_owned()),
    }
}

impl fmt::Display for Platform {
    /// `os/architecture[/variant]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_platform_uses_go_names() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host.to_string(), "linux/amd64");
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(host.to_string(), "linux/arm64");
        }
    }

    #[test]
    fn normalises_like_containerd() {
        let cases = [
            (("Linux", "x86_64", None), "linux/amd64"),
            (("linux", "amd64", Some("v1")), "linux/amd64"),
            (("linux", "amd64", Some("v3")), "linux/amd64/v3"),
            (("linux", "aarch64", None), "linux/arm64"),
            (("linux", "arm64", Some("v8")), "linux/arm64"),
            (("linux", "arm64", Some("8")), "linux/arm64"),
            (("linux", "armhf", None), "linux/arm/v7"),
            (("linux", "armel", None), "linux/arm/v6"),
            (("linux", "arm", None), "linux/arm/v7"),
            (("linux", "arm", Some("6")), "linux/arm/v6"),
            (("linux", "i386", None), "linux/386"),
            (("linux", "s390x", None), "linux/s390x"),
        ];
        for ((os, arch, variant), expected) in cases {
            assert_eq!(Platform::new(os, arch, variant).to_string(), expected);
        }
    }

    #[test]
    fn hosts_run_their_own_platform_first_then_compatible_ones() {
        let p = |s: &str| {
            let parts: Vec<&str> = s.split('/').collect();
            Platform::new(parts[0], parts[1], parts.get(2).copied())
        };
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "linux/amd64",
                &["linux/amd64", "linux/386"],
                &["linux/arm64", "linux/amd64/v3", "windows/amd64"],
            ),
            (
                "linux/arm64",
                &[
                    "linux/arm64",
                    "linux/arm/v8",
                    "linux/arm/v7",
                    "linux/arm/v6",
                    "linux/arm/v5",
                ],
                &["linux/amd64"],
            ),
            (
                "linux/arm/v7",
                &["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"],
                &["linux/arm/v8", "linux/arm64"],
            ),
            (
                "linux/arm/v6",
                &["linux/arm/v6", "linux/arm/v5"],
                &["linux/arm/v7"],
            ),
            ("linux/s390x", &["linux/s390x"], &["linux/amd64"]),
        ];
        for (host, runs, refuses) in cases {
            let host = p(host);
            for (rank, candidate) in runs.iter().enumerate() {
                assert_eq!(
                    host.rank(&p(candidate)),
                    Some(rank),
                    "{host} runs {candidate}"
                );
            }
            for candidate in *refuses {
                assert_eq!(host.rank(&p(candidate)), None, "{host} refuses {candidate}");
            }
        }
    }
}
